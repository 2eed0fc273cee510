"""The real-Knative harness and its tests (docs/knative-harness.md). A package, so that its
conftest is not imported as the top-level `conftest` of tests/."""
