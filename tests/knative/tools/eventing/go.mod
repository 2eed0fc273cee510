// Builds Knative Eventing's binaries for the test harness (tests/knative/build.sh)
// with exactly the dependencies of the release: this module requires nothing else.
module imagerec.test/knative/eventing

go 1.25.0

require knative.dev/eventing v0.49.2
