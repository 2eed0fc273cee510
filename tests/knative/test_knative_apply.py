"""Issue 16, test 1: `kubectl apply -k` of knative/ and of the local and oidc overlays into a
fresh namespace, twice: every object is accepted by the real Eventing and Serving webhooks, and
every Knative object becomes Ready under the real Eventing controllers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from harness import Cluster

ROOT = Path(__file__).resolve().parents[2]
KNATIVE_KINDS = [
    "services.serving.knative.dev",
    "brokers.eventing.knative.dev",
    "triggers.eventing.knative.dev",
    "sequences.flows.knative.dev",
    "inmemorychannels.messaging.knative.dev",
    "subscriptions.messaging.knative.dev",
    "sinkbindings.sources.knative.dev",
]


def kustomization(tmp: Path, variant: str, namespace: str) -> Path:
    """A kustomization that puts `variant` (a folder of knative/) into `namespace`."""
    subprocess.run(["sh", str(ROOT / "knative/base/secrets/generate.sh")], check=True)
    folder = tmp / namespace
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(*[".."] * len(folder.parts[1:])) / (ROOT / variant).relative_to("/")
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                "resources": [str(base)],
                # Only the top-level kustomization's sortOptions count: a wrapper must ask for
                # the variant's own order too, or the Sequence renders before its channels
                # (knative/README.md "Apply order").
                "sortOptions": {"order": "fifo"},
            }
        )
    )
    return folder


def apply_k(cluster: Cluster, folder: Path, namespace: str) -> str:
    cluster.create_namespace(namespace)
    return cluster.kubectl("apply", "-k", str(folder)).stdout


# overlays/oidc needs authentication-oidc on: test_knative_oidc.py applies it.
@pytest.mark.parametrize("variant", ["knative", "knative/overlays/local"])
def test_apply_twice_is_accepted_and_ready(
    cluster: Cluster, standin, variant: str, tmp_path: Path
) -> None:
    namespace = "apply-" + (variant.rsplit("/", 1)[-1] if "/" in variant else "base")
    folder = kustomization(tmp_path, variant, namespace)
    first = apply_k(cluster, folder, namespace)
    assert "created" in first
    second = apply_k(cluster, folder, namespace)
    assert "created" not in second, second  # the second apply changes nothing it made
    cluster.wait_ready(namespace, KNATIVE_KINDS, timeout=90)
