"""Loading the routing from manifest folders, and the project's own knative/ folder."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from imagerec.events import ACCEPTED, LABELLED, PROCESSED, REJECTED, THUMBNAILED, UPLOADED
from tests.runner_support import (
    FakeClock,
    Subscriber,
    broker,
    post_event,
    ref,
    reply_with,
    running,
    sequence,
    trigger,
)
from tests.test_manifests import KNATIVE, SEQUENCE_STEPS, TRIGGERS
from workflows.manifests import (
    BROKER_DEFAULT_DELIVERY,
    Broker,
    Delivery,
    Destination,
    ManifestError,
    Trigger,
    load_manifests,
    parse_duration,
    subscription_delivery,
    trigger_delivery,
)
from workflows.runner import Runner

NOT_ROUTED = """\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: extract-metadata}
spec: {template: {spec: {containers: [{image: x}]}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: postgres}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: x}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: web}
"""


def write(folder: Path, name: str, *documents: dict | str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [d if isinstance(d, str) else yaml.safe_dump(d) for d in documents]
    (folder / name).write_text("\n---\n".join(texts))


def test_a_kustomization_decides_which_files_count_and_their_namespace(tmp_path):
    write(tmp_path, "routing.yaml", broker(), trigger("listed", ref("s")))
    write(tmp_path / "more", "flows.yaml", sequence("seq", [ref("s")]))
    write(tmp_path / "more", "kustomization.yaml", {"resources": ["flows.yaml"]})
    write(tmp_path, "stray.yaml", trigger("not-listed", ref("s")))
    write(tmp_path, "services.yaml", NOT_ROUTED)
    write(
        tmp_path,
        "kustomization.yaml",
        {"namespace": "photos", "resources": ["routing.yaml", "more", "services.yaml"]},
    )
    manifests = load_manifests(tmp_path)
    assert list(manifests.triggers) == [("photos", "listed")]
    assert list(manifests.brokers) == [("photos", "default")]
    assert list(manifests.sequences) == [("photos", "seq")]
    assert list(manifests.services) == [("photos", "extract-metadata")]
    trigger_ref = manifests.triggers[("photos", "listed")].subscriber.ref
    assert trigger_ref.namespace == "photos"


def test_without_a_kustomization_every_yaml_file_is_read(tmp_path):
    write(tmp_path, "a.yaml", broker(), NOT_ROUTED)
    write(tmp_path, "b.yml", trigger("t", ref("s")))
    manifests = load_manifests(tmp_path)
    assert (list(manifests.brokers), list(manifests.triggers)) == (
        [("imagerec", "default")],
        [("imagerec", "t")],
    )


def step_service(name: str, emits: str = "", function: str | None = None) -> dict:
    """A Knative Service; a step (labelled so, running `function`) when `function` is given."""
    metadata: dict = {"name": name, "annotations": {"imagerec.dev/emits": emits}}
    container: dict = {"image": "x"}
    if function is not None:
        metadata["labels"] = {"app.kubernetes.io/component": "step"}
        container["args"] = ["--source", f"functions/{function}.py", "--target", function]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def test_the_steps_are_the_services_labelled_step_with_their_function(tmp_path):
    write(
        tmp_path,
        "services.yaml",
        step_service("web", emits="a"),
        step_service("first", emits="b c", function="first_step"),
        step_service("dead-letters", function="record"),
    )
    manifests = load_manifests(tmp_path)
    assert {name: step.function for name, step in manifests.steps.items()} == {
        "first": "first_step",
        "dead-letters": "record",
    }
    assert manifests.steps["first"].emits == {"b", "c"}
    assert manifests.services[("default", "web")].emits == {"a"}


def test_a_step_without_a_target_fails_to_load(tmp_path):
    document = step_service("first", function="first_step")
    document["spec"]["template"]["spec"]["containers"][0]["args"] = ["--source", "x.py"]
    write(tmp_path, "services.yaml", document)
    with pytest.raises(ManifestError, match="Service default/first: .*--target"):
        load_manifests(tmp_path)


def test_routes_follow_triggers_into_sequences_and_from_step_to_step(tmp_path):
    write(
        tmp_path,
        "routing.yaml",
        step_service("web", emits="uploaded"),
        step_service("check", emits="good bad", function="check"),
        step_service("shrink", emits="shrunk", function="shrink"),
        step_service("store", emits="done", function="store"),
        broker(),
        trigger("on-uploaded", ref("check"), {"type": "uploaded"}),
        trigger("on-good", ref("chain", "Sequence"), {"type": "good"}),
        trigger("on-bad", ref("store"), {"type": "bad"}),
        sequence("chain", [ref("shrink"), ref("store")]),
    )
    assert load_manifests(tmp_path).routes() == {
        "uploaded": ("check",),
        "good": ("shrink",),
        "bad": ("store",),
        "shrunk": ("store",),
    }


def test_the_delivery_in_force_replaces_the_fallback_whole_but_not_its_dead_letter_sink():
    sink = Destination(uri="http://dead-letters.invalid")
    own = Delivery(retry=2, timeout=5.0)
    fallback = Delivery(retry=5, backoff_policy="linear", backoff_delay=1.0, dead_letter_sink=sink)
    subscriber = Destination(uri="http://subscriber.invalid")

    def on(broker_delivery: Delivery | None, trigger_delivery_: Delivery | None) -> Delivery:
        broker = Broker("ns", "default", broker_delivery)
        trigger = Trigger(
            "ns", "t", "default", subscriber, lambda _: True, delivery=trigger_delivery_
        )
        return trigger_delivery(trigger, broker)

    assert on(fallback, own) == Delivery(retry=2, timeout=5.0, dead_letter_sink=sink)
    assert on(fallback, None) == fallback
    assert on(None, None) == BROKER_DEFAULT_DELIVERY
    assert subscription_delivery(own, fallback) == Delivery(
        retry=2, timeout=5.0, dead_letter_sink=sink
    )
    assert subscription_delivery(None, None) == Delivery()
    assert (Delivery().attempts, Delivery().attempt_timeout) == (1, 300.0)


def test_a_missing_resource_is_an_error(tmp_path):
    write(tmp_path, "kustomization.yaml", {"resources": ["gone.yaml"]})
    with pytest.raises(ManifestError, match="gone.yaml"):
        load_manifests(tmp_path)


BAD = {
    "relative uri alone": trigger("t", {"uri": "/events"}),
    "absolute uri beside ref": trigger("t", {**ref("s"), "uri": "http://x/events"}),
    "no destination": trigger("t", {}),
    "bad backoffPolicy": trigger("t", ref("s"), delivery={"backoffPolicy": "fibonacci"}),
    "bad backoffDelay": trigger("t", ref("s"), delivery={"backoffDelay": "2s"}),
    "negative retry": trigger("t", ref("s"), delivery={"retry": -1}),
    "zero timeout": trigger("t", ref("s"), delivery={"timeout": "PT0S"}),
    "bad format": trigger("t", ref("s"), delivery={"format": "xml"}),
    "no broker": {**trigger("t", ref("s")), "spec": {"subscriber": ref("s")}},
    "unknown broker": trigger("t", ref("s"), broker="elsewhere"),
    "sequence without steps": sequence("seq", []),
}


@pytest.mark.parametrize("document", BAD.values(), ids=BAD.keys())
def test_what_the_webhooks_reject_fails_to_load(tmp_path, document):
    write(tmp_path, "routing.yaml", broker(), document)
    with pytest.raises(ManifestError):
        load_manifests(tmp_path)


def with_spec(document: dict, **fields) -> dict:
    return {**document, "spec": {**document["spec"], **fields}}


# Eventing's webhook refuses a field its Go type lacks (docs/knative.md §9); the runner would
# otherwise drop the misspelt setting without a word (no timeout, a filter that passes
# everything...).
UNKNOWN_FIELDS = {
    "delivery.timout": (
        trigger("t", ref("s"), delivery={"retry": 2, "timout": "PT5S"}),
        "spec.delivery: unknown field 'timout'",
    ),
    "trigger deliverY": (
        with_spec(trigger("t", ref("s")), deliverY={"retry": 1}),
        "Trigger imagerec/t: spec: unknown field 'deliverY'",
    ),
    "trigger filter atributes": (
        with_spec(trigger("t", ref("s")), filter={"atributes": {"type": "x"}}),
        "spec.filter: unknown field 'atributes'",
    ),
    "dead-letter sink": (
        trigger("t", ref("s"), delivery={"deadLetterSink": {**ref("dead"), "url": "http://x"}}),
        "spec.delivery.deadLetterSink: unknown field 'url'",
    ),
    "ref namespce": (
        trigger("t", {"ref": {**ref("s")["ref"], "namespce": "other"}}),
        "spec.subscriber.ref: unknown field 'namespce'",
    ),
    "broker delivery": (
        broker("other", delivery={"retries": 3}),
        "Broker imagerec/other: spec.delivery: unknown field 'retries'",
    ),
    "sequence step delivery": (
        sequence("seq", [{**ref("a"), "delivery": {"backofDelay": "PT1S"}}]),
        "spec.steps[0].delivery: unknown field 'backofDelay'",
    ),
    "sequence step": (
        sequence("seq", [{**ref("a"), "deliver": {"retry": 1}}]),
        "spec.steps[0]: unknown field 'deliver'",
    ),
    "sequence spec": (
        with_spec(sequence("seq", [ref("a")]), replyy=ref("b")),
        "Sequence imagerec/seq: spec: unknown field 'replyy'",
    ),
    "channel delivery": (
        sequence("seq", [ref("a")], channel_delivery={"retry": 1, "timeOut": "PT1S"}),
        "spec.channelTemplate.spec.delivery: unknown field 'timeOut'",
    ),
}


@pytest.mark.parametrize(
    ("document", "message"), UNKNOWN_FIELDS.values(), ids=UNKNOWN_FIELDS.keys()
)
def test_unknown_fields_are_refused_as_knatives_webhook_refuses_them(tmp_path, document, message):
    write(tmp_path, "routing.yaml", broker(), document)
    with pytest.raises(ManifestError) as error:
        load_manifests(tmp_path)
    assert message in str(error.value)
    assert "routing.yaml" in str(error.value) and "known: " in str(error.value)


def test_every_field_of_the_knative_types_is_still_accepted(tmp_path):
    delivery = {
        "deadLetterSink": {**ref("dead"), "CACerts": "PEM", "audience": "dead"},
        "retry": 2,
        "backoffPolicy": "linear",
        "backoffDelay": "PT1S",
        "timeout": "PT5S",
        "retryAfterMax": "PT10S",
        "format": "json",
    }
    write(
        tmp_path,
        "routing.yaml",
        broker(delivery=delivery),
        trigger("t", ref("s"), {"type": "x"}, delivery=delivery),
        sequence("seq", [{**ref("a"), "delivery": delivery}], ref("default", "Broker"), delivery),
    )
    manifests = load_manifests(tmp_path)
    loaded = manifests.triggers[("imagerec", "t")].delivery
    assert (loaded.retry, loaded.timeout, loaded.format) == (2, 5.0, "json")
    step = manifests.sequences[("imagerec", "seq")].steps[0]
    assert step.delivery == loaded


def test_destinations_that_do_not_resolve_fail_when_the_runner_is_made(tmp_path):
    write(
        tmp_path,
        "routing.yaml",
        broker(delivery={"deadLetterSink": ref("dead")}),
        trigger("t", ref("missing")),
        trigger("u", ref("nope", "Sequence")),
    )
    with pytest.raises(ManifestError) as error:
        Runner.from_manifests(tmp_path, {"dead": "http://127.0.0.1:9"})
    assert "missing" in str(error.value) and "nope" in str(error.value)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("PT0.2S", 0.2),
        ("PT2S", 2),
        ("PT1M30S", 90),
        ("PT1H", 3600),
        ("P1D", 86400),
        ("PT0,5S", 0.5),
    ],
)
def test_iso_8601_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2s", "P", "PT", "P1Y", "P1M", "PT-1S", "1"])
def test_durations_knative_would_reject(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_ref_with_a_relative_uri_and_a_plain_uri_are_posted_where_they_say(tmp_path):
    with Subscriber() as service:
        manifests = [
            broker(),
            trigger("joined", ref("svc", uri="/events"), {"type": "a"}),
            trigger("plain", {"uri": f"{service.url}/hooks/x"}, {"type": "b"}),
        ]
        with running(tmp_path, manifests, {"svc": service.url}, FakeClock()) as (runner, srv):
            post_event(srv.broker_url, "a")
            post_event(srv.broker_url, "b")
            runner.wait_idle()
    assert sorted(request.path for request in service.received()) == ["/events", "/hooks/x"]


@pytest.mark.skipif(not KNATIVE.is_dir(), reason="knative/ has not been written yet")
def test_the_projects_manifests_route_the_image_workflow():
    manifests = load_manifests(KNATIVE)
    triggers = {trigger.name: trigger for trigger in manifests.triggers.values()}
    for name, (event_type, kind, target) in TRIGGERS.items():
        found = triggers[name]
        assert (found.namespace, found.broker) == ("imagerec", "default")
        assert (found.subscriber.ref.kind, found.subscriber.ref.name) == (kind, target)
        assert found.matches({"type": event_type, "id": "1", "source": "/s", "specversion": "1.0"})
    process = manifests.sequences[("imagerec", "process-image")]
    assert [step.destination.ref.name for step in process.steps] == SEQUENCE_STEPS
    assert (process.reply.ref.kind, process.reply.ref.name) == ("Broker", "default")
    deliveries = [manifests.brokers[("imagerec", "default")].delivery]
    deliveries += [trigger.delivery for trigger in triggers.values()]
    deliveries += [step.delivery or process.channel_delivery for step in process.steps]
    for delivery in deliveries:
        assert delivery.retry and delivery.backoff_policy == "exponential"
        assert delivery.backoff_delay and delivery.dead_letter_sink.ref.name == "record-failure"

    # And over HTTP: each Service the manifests define is a recording stand-in that replies
    # the way the real step does.
    script = {
        "extract-metadata": lambda r: reply_with(
            ACCEPTED if r.attributes["subject"] == "good" else REJECTED, r.attributes["subject"]
        ),
        "make-thumbnail": lambda r: reply_with(THUMBNAILED, r.attributes["subject"]),
        "detect-objects": lambda r: reply_with(LABELLED, r.attributes["subject"]),
        "store-results": lambda r: reply_with(PROCESSED, r.attributes["subject"]),
    }
    names = sorted({name for _, name in manifests.services})
    with ExitStack() as stack:
        stand_ins = {
            name: stack.enter_context(Subscriber(script.get(name, lambda r: (202, {}, b""))))
            for name in names
        }
        services = {name: stand_in.url for name, stand_in in stand_ins.items()}
        runner = Runner.from_manifests(KNATIVE, services, clock=FakeClock())
        server = stack.enter_context(runner.serve("127.0.0.1", 0))
        assert server.broker_url.endswith("/imagerec/default")
        for subject in ("good", "bad"):
            assert post_event(server.broker_url, UPLOADED, subject=subject).status_code == 202
        runner.wait_idle()

    def seen(name):
        return sorted(
            (r.attributes["type"], r.attributes["subject"]) for r in stand_ins[name].received()
        )

    assert seen("extract-metadata") == [(UPLOADED, "bad"), (UPLOADED, "good")]
    assert seen("make-thumbnail") == [(ACCEPTED, "good")]
    assert seen("detect-objects") == [(THUMBNAILED, "good")]
    assert seen("store-results") == [(LABELLED, "good"), (REJECTED, "bad")]
    assert seen("record-failure") == []
    # What the manifests' derived routes say each step receives is what the runner delivered.
    for name in manifests.steps:
        routed = {t for t, steps in manifests.routes().items() if name in steps}
        assert {event_type for event_type, _ in seen(name)} == routed, name
