#!/bin/sh
# Deploys imagerec with kn, and kubectl for what kn cannot make (the namespace, Secrets,
# PostgreSQL, Redis, the migrate Job, the reconcile CronJob, the annotated Broker, the Sequence
# and its channels, the NetworkPolicies). The result is the same deployment as
# `kubectl apply -k knative/`, except for what tests/test_kn_deploy.py lists with its reason (it
# runs this script against a recording kn and kubectl and compares every object with the
# kustomize render).
#
#   REG=registry.example.com/me TAG=0.1.0 sh knative/kn-deploy.sh
#
# Needs kn ≥ 1.23 and kubectl on PATH, a cluster as knative/README.md describes, and the images
# $REG/imagerec-{web,step,detector}:$TAG. Running it again updates the Services (new Revisions)
# and re-applies the YAML; the Triggers and SinkBindings are created only when missing.
set -eu
: "${REG:?set REG to the registry holding the images}"
: "${TAG:?set TAG to the images tag}"
here=$(dirname "$0")
ns=imagerec

# The namespace first, once; never deleted with the rest (namespace.yaml says why).
kubectl apply -f "$here/namespace.yaml"

# Credentials: random on first use, kept afterwards (base/secrets/generate.sh), unsuffixed.
sh "$here/base/secrets/generate.sh"
for name in postgres redis app; do
  kubectl -n "$ns" create secret generic "imagerec-$name" \
    --from-env-file="$here/base/secrets/$name.env" --dry-run=client -o yaml | kubectl apply -f -
done

kubectl apply -f "$here/base/networkpolicies.yaml"
kubectl apply -f "$here/base/postgres.yaml" -f "$here/base/redis.yaml"
# A Job's template is immutable: replace it, so that the new image's migrations run.
kubectl -n "$ns" delete job migrate --ignore-not-found
sed "s|image: imagerec-web|image: $REG/imagerec-web:$TAG|" "$here/base/migrate.yaml" | kubectl apply -f -

DB=IMAGEREC_DATABASE_URL=secret:imagerec-app:database-url
BLOB=IMAGEREC_BLOB_URL=secret:imagerec-app:blob-url

# step NAME IMAGE EMITS MAX_SCALE THREADS TIMEOUT REQUEST LIMIT [more kn flags]
# One workflow step: imagerec/serve.py serving functions/<module>.py, cluster-local. THREADS
# is sized to the CPU limit and bounds the concurrency (base/steps.yaml says why).
step() {
  name=$1 image=$2 emits=$3 max=$4 threads=$5 timeout=$6 request=$7 limit=$8
  shift 8
  module=$(echo "$name" | tr - _)
  kn service create "$name" -n "$ns" --force --image "$REG/$image:$TAG" --cluster-local \
    --label-service app.kubernetes.io/component=step \
    --label-service app.kubernetes.io/part-of=imagerec \
    --label-revision app.kubernetes.io/component=step \
    --label-revision imagerec.dev/uses-postgres=true --label-revision imagerec.dev/uses-redis=true \
    --annotation-service "imagerec.dev/emits=$emits" \
    --cmd imagerec-serve --arg=--source --arg="functions/$module.py" \
    --arg=--target --arg="$module" --arg=--port --arg=8080 --port http1:8080 \
    --scale-min 0 --scale-max "$max" --concurrency-limit "$threads" --timeout "$timeout" \
    --request "$request" --limit "$limit" \
    --env THREADS="$threads" --env-value-from "$DB" --env-value-from "$BLOB" \
    --probe-readiness http:::/ \
    --probe-liveness tcp::8080 --probe-liveness-opts PeriodSeconds=10,FailureThreshold=3 \
    --security-context strict "$@"
}

step record-failure imagerec-step "" 2 4 60 cpu=100m,memory=128Mi cpu=1,memory=512Mi
step extract-metadata imagerec-step \
  "dev.imagerec.image.accepted dev.imagerec.image.rejected" \
  5 4 60 cpu=100m,memory=256Mi cpu=1,memory=1Gi
step make-thumbnail imagerec-step dev.imagerec.image.thumbnailed \
  5 4 60 cpu=100m,memory=256Mi cpu=1,memory=1Gi
step detect-objects imagerec-detector dev.imagerec.image.labelled \
  3 2 300 cpu=1,memory=1536Mi cpu=2,memory=2Gi \
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=5m \
  --env IMAGEREC_DETECTOR_MODEL=/opt/imagerec/model
step store-results imagerec-step dev.imagerec.image.processed \
  5 4 60 cpu=100m,memory=128Mi cpu=1,memory=512Mi

# The Broker, with kubectl: its async-handler annotation must be on it in the request that
# creates it (the Broker makes its channel at once, and the IMC dispatcher fixes the channel's
# mode when it first serves it: docs/knative.md §12), and `kn broker create` has no annotation
# flag (knative/client pkg/commands/broker/create.go). broker.yaml names its class,
# MTChannelBasedBroker (immutable once created), rather than inherit the cluster's default.
kubectl apply -f "$here/base/broker.yaml"

kn service create web -n "$ns" --force --image "$REG/imagerec-web:$TAG" \
  --label-service app.kubernetes.io/component=web \
  --label-service app.kubernetes.io/part-of=imagerec \
  --label-revision imagerec.dev/uses-postgres=true --label-revision imagerec.dev/uses-redis=true \
  --annotation-service imagerec.dev/emits=dev.imagerec.image.uploaded \
  --cmd imagerec-serve --arg=--app --arg='web:create_app()' \
  --arg=--threads --arg=16 --arg=--port --arg=8080 --port http1:8080 \
  --scale-min 0 --scale-max 5 --concurrency-limit 16 --timeout 120 \
  --request cpu=250m,memory=256Mi --limit cpu=1,memory=1Gi \
  --env-value-from "$DB" --env-value-from "$BLOB" \
  --env-value-from IMAGEREC_SECRET_KEY=secret:imagerec-app:secret-key \
  --probe-readiness http:::/healthz \
  --probe-liveness http:::/healthz \
  --probe-liveness-opts PeriodSeconds=10,TimeoutSeconds=5,FailureThreshold=6 \
  --security-context strict
kn source binding describe web -n "$ns" >/dev/null 2>&1 ||
  kn source binding create web -n "$ns" \
    --subject Service:serving.knative.dev/v1:web --sink broker:default

# The reconciler. The binding selects, by label, the Jobs the CronJob creates (bind before the
# first round: a Job started without K_SINK fails "no sink"; the next round works).
# base/reconcile.yaml holds the same SinkBinding beside the CronJob; applying it again is harmless.
kn source binding describe reconcile -n "$ns" >/dev/null 2>&1 ||
  kn source binding create reconcile -n "$ns" \
    --subject Job:batch/v1:app.kubernetes.io/component=reconciler --sink broker:default
sed "s|image: imagerec-web|image: $REG/imagerec-web:$TAG|" "$here/base/reconcile.yaml" | kubectl apply -f -

# kn has no command for a Sequence; its asynchronous channels come with it (base/sequence.yaml).
kubectl apply -f "$here/base/sequence.yaml"

trigger() {  # trigger NAME TYPE SINK
  kn trigger describe "$1" -n "$ns" >/dev/null 2>&1 ||
    kn trigger create "$1" -n "$ns" --broker default --filter "type=$2" --sink "$3"
}
trigger on-uploaded dev.imagerec.image.uploaded ksvc:extract-metadata
# kn's form for any addressable: GROUP/VERSION/RESOURCE:NAME (knative/client
# pkg/flags/sink/sink.go Parse). `channel:` would look up channels.messaging.knative.dev, not the
# InMemoryChannels a Sequence makes.
trigger on-accepted dev.imagerec.image.accepted flows.knative.dev/v1/sequences:process-image
trigger on-rejected dev.imagerec.image.rejected ksvc:store-results
