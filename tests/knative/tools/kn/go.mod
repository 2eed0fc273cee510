// Builds kn for the test harness (tests/knative/build.sh). knative.dev/client v0.50.0
// (knative-v1.23.0) replaces knative.dev/client/pkg with ./pkg, which its module zip lacks;
// the proxy serves that module only at this pseudo-version (2025-04-24), not at the release.
module imagerec.test/knative/kn

go 1.25.0

require (
	knative.dev/client v0.50.0
	knative.dev/client/pkg v0.0.0-20250424014425-1e24794f765f
)
