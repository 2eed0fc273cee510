"""Asynchronous and synchronous delivery, read from the manifests as Knative reads them: the
Broker's `messaging.knative.dev/async-handler` (copied onto its InMemoryChannel), the channels
a Sequence makes or adopts, and the caller's cancellation of a synchronous chain."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.runner_support import (
    NAMESPACE,
    FakeClock,
    Subscriber,
    accept,
    broker,
    post_event,
    ref,
    reply_with,
    running,
    sequence,
    trigger,
)
from workflows.manifests import ASYNC_HANDLER, BROKER_CLASS, load_manifests
from workflows.runner import Runner

KNATIVE = Path(__file__).resolve().parents[1] / "knative"


def channel(name: str, annotations: dict[str, str] | None = None, kind: str = "InMemoryChannel"):
    metadata = {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}}
    return {"apiVersion": "messaging.knative.dev/v1", "kind": kind, "metadata": metadata}


def runner_for(tmp_path, documents) -> Runner:
    (tmp_path / "routing.yaml").write_text(yaml.safe_dump_all(documents))
    services = {"sub": "http://127.0.0.1:9", "one": "http://127.0.0.1:9"}
    return Runner(load_manifests(tmp_path), services)


def test_the_deployed_manifests_are_asynchronous_everywhere():
    manifests = load_manifests(KNATIVE)
    services = {name: "http://127.0.0.1:9" for _, name in manifests.services}
    runner = Runner(manifests, services)
    server = runner.serve()
    try:
        assert runner.asynchronous("imagerec", "default")
        for i in range(3):
            assert runner.asynchronous("imagerec", f"process-image-kn-sequence-{i}")
    finally:
        server.stop()


@pytest.mark.parametrize(
    "annotations, asynchronous",
    [
        ({}, False),
        ({ASYNC_HANDLER: "true"}, True),
        ({ASYNC_HANDLER: "True"}, True),
        ({ASYNC_HANDLER: "1"}, True),
        ({ASYNC_HANDLER: "false"}, False),
        ({ASYNC_HANDLER: "yes"}, False),  # Go's ParseBool fails: the dispatcher keeps sync
        ({BROKER_CLASS: "Kafka"}, True),  # persists first, then answers
        ({BROKER_CLASS: "MTChannelBasedBroker"}, False),
    ],
)
def test_a_brokers_mode_comes_from_its_annotations(tmp_path, annotations, asynchronous):
    document = broker(asynchronous=False)
    document["metadata"]["annotations"] = annotations
    runner = runner_for(tmp_path, [document, trigger("t", ref("sub"))])
    server = runner.serve()
    try:
        assert runner.asynchronous(NAMESPACE, "default") is asynchronous
    finally:
        server.stop()


@pytest.mark.parametrize(
    "declared, asynchronous",
    [
        (None, False),  # made from the template: no annotation can reach it
        (channel("seq-kn-sequence-0", {ASYNC_HANDLER: "true"}), True),  # adopted
        (channel("seq-kn-sequence-0"), False),
        (channel("other", {ASYNC_HANDLER: "true"}), False),  # another name: not adopted
        (channel("seq-kn-sequence-0", {ASYNC_HANDLER: "true"}, "KafkaChannel"), False),
    ],
)
def test_a_sequence_channel_is_synchronous_unless_an_annotated_one_is_adopted(
    tmp_path, declared, asynchronous
):
    documents = [broker(), sequence("seq", [ref("one")])]
    if declared is not None:
        documents.append(declared)
    runner = runner_for(tmp_path, documents)
    server = runner.serve()
    try:
        assert runner.asynchronous(NAMESPACE, "seq-kn-sequence-0") is asynchronous
    finally:
        server.stop()


def test_an_adopted_channel_brings_its_own_delivery(tmp_path):
    adopted = channel("seq-kn-sequence-0")
    adopted["spec"] = {"delivery": {"retry": 2, "deadLetterSink": ref("dead")}}
    manifests = [
        broker(),
        trigger("start", ref("seq", "Sequence")),
        sequence("seq", [ref("one")], channel_delivery={"retry": 7}),
        adopted,
    ]
    failing = lambda request: (500, {}, b"")  # noqa: E731
    with Subscriber(failing) as one, Subscriber() as dead:
        services = {"one": one.url, "dead": dead.url}
        with running(tmp_path, manifests, services, FakeClock()) as (runner, srv):
            post_event(srv.broker_url, "start")
            runner.wait_idle()
    assert len(one.received()) == 3
    assert len(dead.received()) == 1


def post_in_background(url: str, timeout: float = 10) -> tuple[threading.Thread, list]:
    answers: list = []

    def post() -> None:
        try:
            answers.append(post_event(url, "t") if timeout == 10 else _post(url, timeout))
        except requests.RequestException as e:
            answers.append(e)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, answers


def _post(url: str, timeout: float) -> requests.Response:
    from imagerec.events import encode, new_event

    headers, body = encode(new_event("t", "/tests", {}, "img-1"))
    return requests.post(url, data=body, headers=headers, timeout=timeout)


SYNC = [broker(asynchronous=False), trigger("all", ref("sub"))]


def test_a_synchronous_broker_answers_only_after_the_subscriber(tmp_path):
    release = threading.Event()

    def slow(request):
        release.wait(10)
        return accept(request)

    with Subscriber(slow) as sub, running(tmp_path, SYNC, {"sub": sub.url}) as (runner, srv):
        thread, answers = post_in_background(srv.broker_url)
        sub.wait_for(1)
        thread.join(0.3)
        assert answers == []  # still waiting for the subscriber
        release.set()
        thread.join(10)
    assert [answer.status_code for answer in answers] == [202]


def test_a_synchronous_broker_answers_500_when_a_delivery_failed_without_a_dead_letter_sink(
    tmp_path,
):
    failing = lambda request: (400, {}, b"")  # noqa: E731
    with Subscriber(failing) as sub, running(tmp_path, SYNC, {"sub": sub.url}) as (_, srv):
        assert post_event(srv.broker_url, "t").status_code == 500
    manifests = [
        broker(asynchronous=False),
        trigger("all", ref("sub"), delivery={"deadLetterSink": ref("dead")}),
    ]
    with (
        Subscriber(failing) as sub,
        Subscriber() as dead,
        running(tmp_path / "dls", manifests, {"sub": sub.url, "dead": dead.url}) as (_, srv),
    ):
        assert post_event(srv.broker_url, "t").status_code == 202
        assert len(dead.received()) == 1


def chain(tail_delivery=None):
    """A synchronous Broker whose `t` events run a two-step Sequence on synchronous channels,
    whose result comes back to the Broker for the `tail` Trigger."""
    return [
        broker(asynchronous=False),
        trigger("start", ref("seq", "Sequence"), {"type": "t"}, delivery=tail_delivery),
        sequence("seq", [ref("one"), ref("two")], ref("default", "Broker")),
        trigger("tail", ref("tail"), {"type": "done"}),
    ]


def replying(event_type, delay=0.0):
    def respond(request):
        time.sleep(delay)
        data = json.loads(request.body or b"{}")
        return reply_with(event_type, request.attributes.get("subject"), **data)

    return respond


def test_a_synchronous_chain_answers_the_producer_after_the_last_hop(tmp_path):
    with (
        Subscriber(replying("first")) as one,
        Subscriber(replying("done")) as two,
        Subscriber(replying("never", delay=0.5)) as tail,
    ):
        services = {"one": one.url, "two": two.url, "tail": tail.url}
        with running(tmp_path, chain(), services) as (runner, srv):
            started = time.monotonic()
            response = post_event(srv.broker_url, "t")
            took = time.monotonic() - started
            assert response.status_code == 202
            # Answered only once the tail (0.5 s) had its event: nothing was still pending.
            assert len(tail.received()) == 1
            assert took >= 0.5
            runner.wait_idle(0.1)


def test_the_producer_giving_up_cancels_the_chain_in_flight_and_loses_the_reply(tmp_path):
    with (
        Subscriber(replying("first", delay=1.5)) as one,
        Subscriber(replying("done")) as two,
        Subscriber() as tail,
    ):
        services = {"one": one.url, "two": two.url, "tail": tail.url}
        with running(tmp_path, chain(), services) as (runner, srv):
            with pytest.raises(requests.Timeout):
                _post(srv.broker_url, timeout=0.5)
            one.wait_for(1)
            runner.wait_idle(5)  # everything below was cancelled, nothing is left pending
            time.sleep(1.5)  # past the moment step one answers
    # Step one ran, but its reply had nobody to go to: the channel's caller was gone.
    assert two.received() == [] and tail.received() == []


def test_a_hop_timeout_below_a_synchronous_chain_cancels_it_and_dead_letters(tmp_path):
    delivery = {"timeout": "PT0.5S", "deadLetterSink": ref("dead")}
    with (
        Subscriber(replying("first", delay=1.5)) as one,
        Subscriber(replying("done")) as two,
        Subscriber() as tail,
        Subscriber() as dead,
    ):
        services = {"one": one.url, "two": two.url, "tail": tail.url, "dead": dead.url}
        with running(tmp_path, chain(delivery), services) as (runner, srv):
            assert post_event(srv.broker_url, "t").status_code == 202  # dead-lettered: success
            time.sleep(1.5)
            runner.wait_idle(5)
    assert [r.attributes["type"] for r in dead.received()] == ["t"]
    assert two.received() == [] and tail.received() == []


def test_each_hop_is_a_span_of_the_events_trace(tmp_path):
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with (
        Subscriber() as sub,
        running(tmp_path, [broker(), trigger("t", ref("sub"))], {"sub": sub.url}) as (
            runner,
            srv,
        ),
    ):
        post_event(srv.broker_url, "t", headers={"ce-traceparent": parent})
        runner.wait_idle()
    [received] = sub.received()
    assert received.attributes["traceparent"] == parent  # the extension travels unchanged
    span = received.headers["traceparent"]
    assert span.startswith("00-" + "a" * 32 + "-") and span != parent
