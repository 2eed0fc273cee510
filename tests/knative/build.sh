#!/bin/sh
# Builds the real components of the Knative test harness from the Go module
# proxy into a per-machine cache outside the repository, once per version.
# Later runs (and CI's fresh clone on the same machine) reuse it.
#   IMAGEREC_KNATIVE_CACHE  cache folder (default ~/.cache/imagerec-knative)
# Prints one line per component with its wall time; exits non-zero if any
# component failed, after trying all of them (see docs/knative-harness.md).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
cache=${IMAGEREC_KNATIVE_CACHE:-$HOME/.cache/imagerec-knative}
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="-trimpath" CGO_ENABLED=0
ldflags="-s -w"
failed=""
mkdir -p "$cache/logs"

# build NAME DIR BIN... -- COMMAND: run COMMAND (with $out set) unless every BIN exists.
build() {
	name=$1 out=$2; shift 2
	bins=""
	while [ "$1" != "--" ]; do bins="$bins $1"; shift; done
	shift
	missing=""
	for b in $bins; do [ -x "$out/$b" ] || missing="$missing $b"; done
	if [ -z "$missing" ]; then echo "knative-build: $name cached in $out"; return 0; fi
	mkdir -p "$out"
	log="$cache/logs/$name.log"
	start=$(date +%s)
	if (cd "$here/tools" && "$@") >"$log" 2>&1; then
		echo "knative-build: $name built in $(($(date +%s) - start)) s -> $out"
	else
		echo "knative-build: $name FAILED after $(($(date +%s) - start)) s; command: $*" >&2
		tail -n 20 "$log" >&2
		failed="$failed $name"
		# A half-built set must not pass for a cached one next time.
		for b in $bins; do rm -f "$out/$b"; done
	fi
}

# `go install pkg@version` needs the module's version list, which the proxy here refuses
# (403) for knative.dev: each component is built in a small module that pins it instead.
ev="$cache/eventing@$EVENTING_VERSION/bin"
build eventing "$ev" controller webhook mtchannel_broker ingress filter channel_controller channel_dispatcher -- \
	sh -c "cd eventing && go build -p 2 -ldflags='$ldflags' -o '$ev/' \
	knative.dev/eventing/cmd/controller knative.dev/eventing/cmd/webhook \
	knative.dev/eventing/cmd/mtchannel_broker knative.dev/eventing/cmd/broker/ingress \
	knative.dev/eventing/cmd/broker/filter knative.dev/eventing/cmd/in_memory/channel_controller \
	knative.dev/eventing/cmd/in_memory/channel_dispatcher"

kube="$cache/kubernetes@$KUBERNETES_VERSION/bin"
# Kubernetes' own build stamps its version into the binaries (hack/lib/version.sh); without it
# the API server reports v0.0.0-master+$Format:%H$ and Knative's version check refuses to start.
minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
kv=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kv="$kv -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
build kubernetes "$kube" etcd kube-apiserver kubectl -- sh -c "
	cd kube &&
	go build -p 2 -ldflags='$ldflags' -o '$kube/etcd' go.etcd.io/etcd/server/v3 &&
	go build -p 2 -ldflags='$ldflags $kv' -o '$kube/kube-apiserver' k8s.io/kubernetes/cmd/kube-apiserver &&
	go build -p 2 -ldflags='$ldflags $kv' -o '$kube/kubectl' k8s.io/kubernetes/cmd/kubectl"

# kn: knative.dev/client replaces knative.dev/client/pkg with ./pkg, and the proxy serves no
# knative.dev/client/pkg at the release (v0.50.0: 404) nor at its commit: tools/kn/go.mod pairs
# the release's cmd/kn with the one knative.dev/client/pkg it serves (see docs/knative-harness.md).
kn="$cache/client@$CLIENT_VERSION/bin"
build kn "$kn" kn -- sh -c "cd kn && go build -p 2 \
	-ldflags='$ldflags -X knative.dev/client/pkg/commands/version.Version=$CLIENT_VERSION+pkg-$KN_PKG_VERSION' \
	-o '$kn/kn' knative.dev/client/cmd/kn"

# The Knative YAML (CRDs, config maps, RBAC) comes from the same module versions.
go mod download knative.dev/eventing@"$EVENTING_VERSION" knative.dev/serving@"$SERVING_VERSION" || failed="$failed modules"

if [ -n "$failed" ]; then echo "knative-build: failed:$failed" >&2; exit 1; fi
