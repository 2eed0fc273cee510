# The versions the Knative test harness builds and runs (sourced by build.sh).
# Knative release tags map to module versions: knative-v1.22.2 = v0.49.2.
EVENTING_VERSION=v0.49.2   # knative-v1.22.2
SERVING_VERSION=v0.50.0    # knative-v1.23.0
CLIENT_VERSION=v0.50.0     # kn, knative-v1.23.0
KUBERNETES_VERSION=v1.35.4 # etcd is the v3.6.5 that this release requires
# The only knative.dev/client/pkg the module proxy serves (see build.sh); must match tools/kn/go.mod.
KN_PKG_VERSION=v0.0.0-20250424014425-1e24794f765f
