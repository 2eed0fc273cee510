"""The variants of knative/: the Kafka overlay (production delivery), the OIDC overlay
(authenticated senders) and the base's NetworkPolicies, rendered and validated offline.

Each overlay is built with kustomize like the base (tests/test_manifests.py) and validated
strictly: Knative kinds against their CRD schemas (EventPolicy and KafkaChannel from
tests/schemas/knative/), built-in kinds with kubernetes-validate. What the overlay changes is
checked against the base; everything else must stay the same.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from imagerec import senders
from tests.test_manifests import (
    KNATIVE,
    NAMESPACE,
    STEPS,
    build,
    crd_errors,
    is_knative,
    knative_services,
    objects,
    one,
    selects,
    walk,
)
from tests.test_manifests import deploy_dir as deploy_dir  # noqa: F401 (fixture: one set of credentials)

CLASS = "eventing.knative.dev/broker.class"


@pytest.fixture(scope="module")
def base(deploy_dir: Path) -> list[dict[str, Any]]:
    return build(deploy_dir / "base")


@pytest.fixture(scope="module")
def kafka(deploy_dir: Path) -> list[dict[str, Any]]:
    return build(deploy_dir / "overlays" / "kafka")


@pytest.fixture(scope="module")
def oidc(deploy_dir: Path) -> list[dict[str, Any]]:
    return build(deploy_dir / "overlays" / "oidc")


def validation_errors(built: list[dict[str, Any]]) -> list[str]:
    errors = []
    version = kubernetes_validate.latest_version()
    for o in built:
        if is_knative(o):
            errors += crd_errors(o)
        else:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{o['kind']} {o['metadata']['name']}: {e.message}")
    return errors


@pytest.mark.parametrize("variant", ["base", "kafka", "oidc"])
def test_every_variant_validates_strictly(variant: str, request: pytest.FixtureRequest) -> None:
    built = request.getfixturevalue(variant)
    assert not validation_errors(built), "\n".join(validation_errors(built))


def keyed(built: list[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in built}


# --- Kafka ---------------------------------------------------------------------------------------


def test_kafka_uses_the_kafka_broker_and_kafka_channels(kafka: list[dict[str, Any]]) -> None:
    broker = one(kafka, "Broker", "default")
    assert broker["metadata"]["annotations"] == {CLASS: "Kafka"}  # no IMC setting left
    config = broker["spec"]["config"]
    assert (config["apiVersion"], config["kind"]) == ("v1", "ConfigMap")
    topics = one(kafka, "ConfigMap", config["name"])
    assert topics["metadata"]["namespace"] == config["namespace"]
    assert topics["data"]["bootstrap.servers"]
    # Replicated: an event survives the loss of a Kafka broker.
    assert int(topics["data"]["default.topic.replication.factor"]) >= 3
    template = one(kafka, "Sequence", "process-image")["spec"]["channelTemplate"]
    assert (template["apiVersion"], template["kind"]) == (
        "messaging.knative.dev/v1beta1",
        "KafkaChannel",
    )
    assert template["spec"]["replicationFactor"] >= 3
    assert not objects(kafka, "InMemoryChannel")


def test_the_channels_the_kafka_sequence_makes_validate(kafka: list[dict[str, Any]]) -> None:
    # The Sequence creates its channels from channelTemplate: validate what it would create.
    sequence = one(kafka, "Sequence", "process-image")
    template = sequence["spec"]["channelTemplate"]
    for i in range(len(sequence["spec"]["steps"])):
        channel = {
            "apiVersion": template["apiVersion"],
            "kind": template["kind"],
            "metadata": {"name": f"process-image-kn-sequence-{i}", "namespace": "imagerec"},
            "spec": template["spec"],
        }
        assert not crd_errors(channel), crd_errors(channel)
    wrong = copy.deepcopy(channel)
    wrong["spec"]["replicationFactr"] = 3
    assert crd_errors(wrong)


def test_kafka_changes_only_the_delivery_layer(
    base: list[dict[str, Any]], kafka: list[dict[str, Any]]
) -> None:
    before, after = keyed(base), keyed(kafka)
    removed = set(before) - set(after)
    added = set(after) - set(before)
    assert removed == {("InMemoryChannel", f"process-image-kn-sequence-{i}") for i in range(3)}
    assert added == {("ConfigMap", "kafka-broker-config")}
    changed = {k for k in set(before) & set(after) if before[k] != after[k]}
    assert changed == {("Broker", "default"), ("Sequence", "process-image")}
    # Every hop keeps its retries, backoff, timeout and dead-letter sink.
    assert (
        before[("Broker", "default")]["spec"]["delivery"]
        == after[("Broker", "default")]["spec"]["delivery"]
    )
    assert (
        before[("Sequence", "process-image")]["spec"]["steps"]
        == after[("Sequence", "process-image")]["spec"]["steps"]
    )


# --- OIDC and EventPolicies ----------------------------------------------------------------------


def senders_to(built: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str]]:
    """Who sends events to an Eventing addressable, from the routing itself."""
    services = knative_services(built)
    found = set()
    for binding in objects(built, "SinkBinding"):
        ref = binding["spec"]["sink"]["ref"]
        if (ref["kind"], ref["name"]) == (kind, name):
            found.add(("SinkBinding", binding["metadata"]["name"]))
    for trigger in objects(built, "Trigger"):
        subscriber = trigger["spec"]["subscriber"]["ref"]
        if (subscriber["kind"], subscriber["name"]) == (kind, name):
            found.add(("Trigger", trigger["metadata"]["name"]))
        # A Service that answers with an event: the broker filter posts the reply back to the
        # Trigger's Broker, as the Trigger.
        replies = subscriber["kind"] == "Service" and services[subscriber["name"]]["metadata"][
            "annotations"
        ].get("imagerec.dev/emits")
        if kind == "Broker" and trigger["spec"]["broker"] == name and replies:
            found.add(("Trigger", trigger["metadata"]["name"]))
    for sequence in objects(built, "Sequence"):
        reply = sequence["spec"].get("reply", {}).get("ref", {})
        if (reply.get("kind"), reply.get("name")) == (kind, name):
            last = len(sequence["spec"]["steps"]) - 1
            # The Sequence's last Subscription sends its reply (sequence/resources/subscription.go).
            found.add(("Subscription", f"{sequence['metadata']['name']}-kn-sequence-{last}"))
    return found


def test_event_policies_admit_exactly_the_senders_of_the_routing(
    oidc: list[dict[str, Any]],
) -> None:
    policies = objects(oidc, "EventPolicy")
    assert len(policies) == 2
    covered = set()
    for policy in policies:
        [target] = policy["spec"]["to"]
        kind, name = target["ref"]["kind"], target["ref"]["name"]
        assert one(oidc, kind, name)["apiVersion"] == target["ref"]["apiVersion"]
        namespace = policy["metadata"]["namespace"]
        admitted = {
            ("ref", f["ref"]["kind"], f["ref"]["name"]) if "ref" in f else ("sub", f["sub"])
            for f in policy["spec"]["from"]
        }
        assert admitted == {
            policy_sender(namespace, *sender) for sender in senders_to(oidc, kind, name)
        }, policy["metadata"]["name"]
        covered.add((kind, name))
    assert covered == {("Broker", "default"), ("Sequence", "process-image")}


# Senders whose status.auth Eventing fills only once their Broker is Ready: a policy that named
# them by ref would hold the Broker back for ever (eventpolicies.yaml).
BY_SUBJECT = {"Trigger": "eventing.knative.dev", "Subscription": "messaging.knative.dev"}


def policy_sender(namespace: str, kind: str, name: str) -> tuple[str, ...]:
    if kind in BY_SUBJECT:
        return ("sub", oidc_subject(namespace, BY_SUBJECT[kind], kind, name))
    return ("ref", kind, name)


def test_the_policy_check_bites(oidc: list[dict[str, Any]]) -> None:
    # Without the Sequence's reply path the Broker policy would refuse processed events.
    senders = senders_to(oidc, "Broker", "default")
    assert ("Subscription", "process-image-kn-sequence-2") in senders
    assert ("SinkBinding", "web") in senders and ("Trigger", "on-accepted") not in senders


OIDC_ENV = {"IMAGEREC_OIDC_AUDIENCE", "IMAGEREC_OIDC_SENDERS"}


def without_step_checks(obj: dict) -> dict:
    """`obj` without what the OIDC component adds to it: audiences and the steps' OIDC env."""
    obj = copy.deepcopy(obj)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "ref" in node:
                node.pop("audience", None)
            if isinstance(node.get("env"), list):
                node["env"] = [e for e in node["env"] if e["name"] not in OIDC_ENV]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(obj)
    return obj


def test_oidc_adds_the_policies_and_step_checks_only(
    base: list[dict[str, Any]], oidc: list[dict[str, Any]]
) -> None:
    before, after = keyed(base), keyed(oidc)
    assert set(after) - set(before) == {
        ("EventPolicy", "broker-senders"),
        ("EventPolicy", "sequence-senders"),
    }
    assert all(before[k] == without_step_checks(after[k]) for k in before)
    # Without the overlay, no step checks tokens and no Destination asks for one.
    assert all(before[k] == without_step_checks(before[k]) for k in before)


# The OIDC service account Eventing makes for a sender (knative/eventing pkg/auth/serviceaccount.go
# GetOIDCServiceAccountNameForResource), named by knative.dev/pkg kmeta/names.go ChildName.


def child_name(parent: str, suffix: str) -> str:
    longest, head = 63, 63 - 32
    if len(parent) <= longest - len(suffix):
        return parent + suffix
    if head - len(suffix) <= 0:
        name = parent[:head] + hashlib.md5((parent + suffix).encode()).hexdigest()
        name += suffix[: max(0, longest - len(name))]
        return name.rstrip("".join(c for c in name if not c.isalnum()))
    return parent[: head - len(suffix)] + hashlib.md5(parent.encode()).hexdigest() + suffix


@pytest.mark.parametrize(
    "parent, suffix, want",
    [  # knative.dev/pkg kmeta/names_test.go
        ("asdf", "-deployment", "asdf-deployment"),
        (
            "f" * 63,
            "-deployment",
            "ffffffffffffffffffff105d7597f637e83cc711605ac3ea4957-deployment",
        ),
        ("f" * 63, "f" * 63, "fffffffffffffffffffffffffffffff0502661254f13c89973cb3a83e0cbec0"),
        ("a", "f" * 63, "ab5cfd486935decbc0d305799f4ce4414ffffffffffffffffffffffffffffff"),
        ("b" * 32, "f" * 32, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb329c7c81b9ab3ba71aa139066aa5625d"),
        ("aaaa", "b---a" * 20, "aaaa7a3f7966594e3f0849720eced8212c18b---ab---ab---ab---ab---ab"),
        (
            "a" * 17,
            "a.-.-.-.-.-.-.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaaaa1eb10dc911444f8434af83b7225442da",
        ),
    ],
)
def test_child_name_is_knatives(parent: str, suffix: str, want: str) -> None:
    assert child_name(parent, suffix) == want


def oidc_subject(namespace: str, group: str, kind: str, name: str) -> str:
    account = child_name(name, f"-oidc-{group}-{kind}").lower()
    return f"system:serviceaccount:{namespace}:{account}"


def step_deliveries(built: list[dict[str, Any]]) -> list[tuple[dict, str]]:
    """Every Destination Eventing delivers to, with the subject of the sender that delivers."""
    broker_dls = {
        b["metadata"]["name"]: b["spec"].get("delivery", {}).get("deadLetterSink")
        for b in objects(built, "Broker")
    }
    found = []
    for trigger in objects(built, "Trigger"):
        meta = trigger["metadata"]
        # The broker filter sends as the Trigger (pkg/broker/filter/filter_handler.go send).
        sender = oidc_subject(meta["namespace"], "eventing.knative.dev", "Trigger", meta["name"])
        found.append((trigger["spec"]["subscriber"], sender))
        dls = trigger["spec"].get("delivery", {}).get("deadLetterSink")
        found.append((dls or broker_dls[trigger["spec"]["broker"]], sender))
    for sequence in objects(built, "Sequence"):
        meta = sequence["metadata"]
        default = sequence["spec"]["channelTemplate"].get("spec", {}).get("delivery", {})
        for i, step in enumerate(sequence["spec"]["steps"]):
            # A channel dispatcher sends as the step's Subscription (fanout_event_handler.go).
            subscription = f"{meta['name']}-kn-sequence-{i}"
            sender = oidc_subject(
                meta["namespace"], "messaging.knative.dev", "Subscription", subscription
            )
            found.append((step, sender))
            dls = step.get("delivery", default).get("deadLetterSink")
            if dls:
                found.append((dls, sender))
    return [(d, s) for d, s in found if d and d.get("ref", {}).get("kind") == "Service"]


def step_check_env(built: list[dict[str, Any]], name: str) -> dict[str, str]:
    c = knative_services(built)[name]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"] if e["name"] in OIDC_ENV}


def test_every_step_checks_exactly_the_senders_of_the_routing(
    oidc: list[dict[str, Any]],
) -> None:
    wanted: dict[str, set[str]] = {name: set() for name in STEPS}
    for destination, sender in step_deliveries(oidc):
        name = destination["ref"]["name"]
        env = step_check_env(oidc, name)
        # Without an audience Eventing sends no token, and the step refuses the delivery.
        assert destination.get("audience") == env["IMAGEREC_OIDC_AUDIENCE"], destination
        wanted[name].add(sender)
    for name, subjects in wanted.items():
        env = step_check_env(oidc, name)
        check = senders.sender_check(env)
        assert check is not None and check.senders == subjects, name
        assert check.audience == f"serving.knative.dev/service/{NAMESPACE}/{name}"
    assert len({step_check_env(oidc, n)["IMAGEREC_OIDC_AUDIENCE"] for n in STEPS}) == len(STEPS)


def test_the_sender_derivation_bites(oidc: list[dict[str, Any]]) -> None:
    # The Sequence's last step is sent by a Subscription whose name Eventing hashes.
    subjects = {s for d, s in step_deliveries(oidc) if d["ref"]["name"] == "store-results"}
    assert subjects == {
        "system:serviceaccount:imagerec:on-rejected-oidc-eventing.knative.dev-trigger",
        "system:serviceaccount:imagerec:process-image-kn-sequence-24784a28ced8071cbab9b7588cf1c90e4-oid",
    }


def test_event_policy_schema_refuses_typos(oidc: list[dict[str, Any]]) -> None:
    policy = copy.deepcopy(one(oidc, "EventPolicy", "broker-senders"))
    assert not crd_errors(policy)
    policy["spec"]["form"] = policy["spec"].pop("from")
    assert any("'form' was unexpected" in e for e in crd_errors(policy))


# --- NetworkPolicies (in the base) -------------------------------------------------------------


def pod_templates_with_env(built: list[dict[str, Any]]) -> dict[str, tuple[dict, str]]:
    """owner -> (pod template labels, the env it reads, as text)."""
    found = {}
    for o in built:
        spec = o.get("spec", {})
        if o["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
        elif o["kind"] in ("StatefulSet", "Job") or o["apiVersion"].startswith("serving.knative"):
            template = spec["template"]
        else:
            continue
        env = str([c.get("env", []) for c in template["spec"]["containers"]])
        found[f"{o['kind']} {o['metadata']['name']}"] = (
            template.get("metadata", {}).get("labels", {}),
            env,
        )
    return found


def test_databases_admit_only_the_apps_pods(base: list[dict[str, Any]]) -> None:
    for policy_name, database, port, key in (
        ("postgres-from-app", "postgres", 5432, "database-url"),
        ("redis-from-app", "redis", 6379, "blob-url"),
    ):
        policy = one(base, "NetworkPolicy", policy_name)["spec"]
        statefulset = one(base, "StatefulSet", database)["spec"]
        assert (
            policy["podSelector"]["matchLabels"].items()
            <= statefulset["template"]["metadata"]["labels"].items()
        )
        assert policy["policyTypes"] == ["Ingress"]
        [rule] = policy["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        [source] = rule["from"]
        assert set(source) == {"podSelector"}, "only pods of this namespace"
        wanted = source["podSelector"]["matchLabels"]
        # Every pod that reads the database's URL carries the label; nothing else does.
        for owner, (labels, env) in pod_templates_with_env(base).items():
            uses = key in env
            assert (wanted.items() <= labels.items()) == uses, (policy_name, owner)


def test_steps_admit_only_knatives_data_plane(base: list[dict[str, Any]]) -> None:
    policy = one(base, "NetworkPolicy", "steps-from-knative")["spec"]
    # A Revision's pods carry its template's labels: the policy selects every step, nothing else.
    selected = {
        owner
        for owner, (labels, _) in pod_templates_with_env(base).items()
        if selects(policy["podSelector"], labels)
    }
    assert selected == {f"Service {name}" for name in STEPS}
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert set(source) == {"namespaceSelector"}
    [namespaces] = source["namespaceSelector"]["matchExpressions"]
    assert namespaces["key"] == "kubernetes.io/metadata.name"
    assert {"knative-serving", "knative-eventing"} <= set(namespaces["values"])
    assert "imagerec" not in namespaces["values"]
    # The web stays public: no policy selects it.
    for p in objects(base, "NetworkPolicy"):
        for _, node in walk(p["spec"]["podSelector"]):
            assert node != "web"


# --- Apply order ---------------------------------------------------------------------------------
# kubectl and skaffold apply in render order. kustomize's default (legacy) order sorts kinds it
# does not know by group, so flows.knative.dev (the Sequence) came before messaging.knative.dev
# (its channels), and the Sequence controller created the channels itself, unannotated
# (knative/eventing pkg/reconciler/sequence/sequence.go reconcileChannel).

POD_MAKERS = {"StatefulSet", "Job", "CronJob", "Deployment"}


def top_level_kustomizations() -> list[Path]:
    """Every kustomization under knative/ that no other one includes: what gets applied."""
    folders = {p.parent for p in KNATIVE.rglob("kustomization.yaml")}
    included = set()
    for folder in folders:
        spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
        for entry in spec.get("resources", []) + spec.get("components", []):
            included.add((folder / entry).resolve())
    return sorted(f for f in folders if f.resolve() not in included)


def order_problems(built: list[dict[str, Any]]) -> list[str]:
    """What renders after something that needs it (or whose controller would make it)."""
    position = {(o["kind"], o["metadata"]["name"]): i for i, o in enumerate(built)}
    problems = []

    def before(needed: tuple[str, str], user: dict, why: str) -> None:
        mine = position[(user["kind"], user["metadata"]["name"])]
        if needed in position and position[needed] > mine:
            problems.append(f"{needed} after {user['kind']} {user['metadata']['name']}: {why}")

    for o in built:
        for path, node in walk(o.get("spec", {})):
            if path.endswith(("secretKeyRef/name", "secretRef/name", "secret/secretName")):
                before(("Secret", node), o, "read by it")
            if path.endswith(("configMapKeyRef/name", "configMapRef/name", "configMap/name")):
                before(("ConfigMap", node), o, "read by it")
        if o["kind"] == "Broker" and "config" in o["spec"]:
            before(("ConfigMap", o["spec"]["config"]["name"]), o, "the Broker's config")
        if o["kind"] == "Sequence":
            kind = o["spec"]["channelTemplate"]["kind"]
            for i in range(len(o["spec"]["steps"])):
                channel = (kind, f"{o['metadata']['name']}-kn-sequence-{i}")
                before(channel, o, "the Sequence would create it unannotated")
        if o["kind"] in POD_MAKERS or o["apiVersion"].startswith("serving.knative.dev"):
            for policy in objects(built, "NetworkPolicy"):
                before(("NetworkPolicy", policy["metadata"]["name"]), o, "guards its pods")
    return problems


def test_every_variant_is_a_top_level_kustomization() -> None:
    found = {str(p.relative_to(KNATIVE)) for p in top_level_kustomizations()}
    assert found == {".", "overlays/local", "overlays/oidc", "overlays/kafka"}


@pytest.mark.parametrize(
    "variant", [str(p.relative_to(KNATIVE)) for p in top_level_kustomizations()]
)
def test_every_variant_renders_what_objects_need_before_them(
    variant: str, deploy_dir: Path
) -> None:
    built = build(deploy_dir / variant)
    assert not order_problems(built), "\n".join(order_problems(built))
    # The base's channels are declared; the Kafka overlay lets the Sequence make KafkaChannels.
    channels = [o for o in built if o["kind"] == "InMemoryChannel"]
    if variant != "overlays/kafka":
        assert len(channels) == 3, variant


def test_the_order_check_bites(deploy_dir: Path, tmp_path: Path) -> None:
    # kustomize's default order, as main rendered before sortOptions: the Sequence first.
    legacy = tmp_path / "knative"
    shutil.copytree(deploy_dir, legacy)
    spec = yaml.safe_load((legacy / "kustomization.yaml").read_text())
    del spec["sortOptions"]
    (legacy / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    problems = order_problems(build(legacy))
    assert any(
        "('InMemoryChannel', 'process-image-kn-sequence-0') after Sequence" in p for p in problems
    ), problems
