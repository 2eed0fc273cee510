"""Issue 16, test 5 (part): the oidc overlay with Eventing's `authentication-oidc` on.

The overlay's EventPolicies are refused by Eventing's webhook while the feature is off
("oidc-authentication feature not enabled"), as knative/overlays/oidc/kustomization.yaml says
it must be turned on first. With it on, the overlay applies twice and every object, the
EventPolicies included, is Ready; an event posted to the Broker without a token is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster
from test_knative_apply import KNATIVE_KINDS, apply_k, kustomization
from test_knative_delivery import deploy, post_event, render


def set_oidc(cluster: Cluster, value: str) -> None:
    patch = json.dumps({"data": {"authentication-oidc": value}})
    cluster.kubectl(
        "-n",
        "knative-eventing",
        "patch",
        "configmap",
        "config-features",
        "--type",
        "merge",
        "-p",
        patch,
    )
    time.sleep(5)  # the components watch the config map; give them a moment to reconfigure


@pytest.fixture
def oidc(cluster: Cluster) -> Iterator[None]:
    set_oidc(cluster, "enabled")
    yield
    set_oidc(cluster, "disabled")


def test_the_oidc_overlay_is_ready_and_refuses_an_anonymous_sender(
    cluster: Cluster, standin, oidc, tmp_path: Path
) -> None:
    namespace = "apply-oidc"
    folder = kustomization(tmp_path, "knative/overlays/oidc", namespace)
    cluster.create_namespace(namespace)
    # First with the channels before the Sequence (test_knative_apply shows main's render order
    # racing the Sequence controller), then as `kubectl apply -k` again.
    deploy(cluster, render(cluster, folder), namespace, "channels-first")
    apply_k(cluster, folder, namespace)
    cluster.wait_ready(
        namespace, [*KNATIVE_KINDS, "eventpolicies.eventing.knative.dev"], timeout=120
    )
    status, _ = post_event(
        cluster.pods["mt-broker-ingress"].ip,
        "broker-ingress.knative-eventing.svc.cluster.local",
        f"/{namespace}/default",
        "dev.imagerec.image.uploaded",
    )
    assert status in (401, 403), status
