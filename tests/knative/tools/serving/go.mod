// Builds Knative Serving's webhook for the test harness (tests/knative/build.sh)
// with exactly the dependencies of the release: this module requires nothing else.
module imagerec.test/knative/serving

go 1.25.0

require knative.dev/serving v0.50.0
