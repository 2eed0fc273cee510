"""Issue 16, test 4: knative/kn-deploy.sh with the real kn and kubectl on a fresh namespace
(`imagerec`, which the script names): the objects read back from the API server are those of
the kustomize render (kind and name), and the Broker's channel does not hold the producer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness import CACHE, VERSIONS, Cluster, binary
from test_knative_apply import KNATIVE_KINDS, ROOT, kustomization
from test_knative_delivery import post_event, render

NAMESPACE = "imagerec"
STEPS = ["extract-metadata", "make-thumbnail", "detect-objects", "store-results", "record-failure"]
# Made by the API server or Knative for what was applied, never by the render or the script.
GENERATED = {"ConfigMap/kube-root-ca.crt", "ServiceAccount/default"}


def kn() -> Path:
    return CACHE / f"client@{VERSIONS['CLIENT_VERSION']}" / "bin" / "kn"


def resource(doc: dict) -> str:
    """kubectl's name for the kind: `service` (core) or `service.serving.knative.dev`."""
    group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
    return doc["kind"].lower() + (f".{group}" if group else "")


def objects(cluster: Cluster, kinds: list[str]) -> set[str]:
    found = set()
    for kind in kinds:
        out = json.loads(cluster.kubectl("get", kind, "-n", NAMESPACE, "-o", "json").stdout)
        for item in out["items"]:
            if not item["metadata"].get("ownerReferences"):
                found.add(f"{item['kind']}/{item['metadata']['name']}")
    return found


def test_kn_deploy_makes_the_rendered_objects_with_an_async_broker_channel(
    cluster: Cluster, sink_factory, tmp_path: Path
) -> None:
    for step in STEPS:
        sink_factory(NAMESPACE, step, delay=30.0)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "kn").symlink_to(kn())
    (tools / "kubectl").symlink_to(binary("kubernetes", "kubectl"))
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "KUBECONFIG": str(cluster.kubeconfig),
        "REG": "registry.test/imagerec",
        "TAG": "9.9.9",
    }
    run = subprocess.run(
        ["sh", str(ROOT / "knative/kn-deploy.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    rendered = render(cluster, kustomization(tmp_path / "k", "knative", "render-only"))
    # The render suffixes generated Secrets with a hash; the script makes them unsuffixed.
    want = {
        f"{d['kind']}/{d['metadata']['name'].rsplit('-', 1)[0]}"
        if d["kind"] == "Secret"
        else f"{d['kind']}/{d['metadata']['name']}"
        for d in rendered
    }
    kinds = sorted({resource(d) for d in rendered})
    got = objects(cluster, kinds) - GENERATED
    assert got == want, (
        f"only kn-deploy.sh: {sorted(got - want)}; only the render: {sorted(want - got)}"
    )

    cluster.wait_ready(NAMESPACE, KNATIVE_KINDS)
    ingress = cluster.pods["mt-broker-ingress"].ip
    status, took = post_event(
        ingress,
        "broker-ingress.knative-eventing.svc.cluster.local",
        f"/{NAMESPACE}/default",
        "dev.imagerec.image.uploaded",
    )
    assert status == 202 and took < 1.0, (
        f"the Broker's channel held the producer: {status} after {took:.1f} s"
    )
