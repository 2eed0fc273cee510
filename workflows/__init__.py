"""The pipeline's routing on one machine: a local stand-in for Knative Eventing.

`workflows.runner.Runner` reads the Knative manifests in knative/ (manifests.py) and routes
CloudEvents over HTTP between the step services exactly as the Broker, Triggers and Sequence
would in a cluster (filters.py, delivery.py, wire.py). It knows manifests and HTTP only, never
the steps themselves.
"""
