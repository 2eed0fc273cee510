"""Replies, retries, backoff, timeouts and dead letters, as Knative does them (§3, §4; §11.2–6)."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable
from itertools import pairwise

import pytest

from tests.runner_support import (
    FakeClock,
    Subscriber,
    broker,
    post_event,
    ref,
    reply_with,
    running,
    trigger,
)
from workflows.delivery import WallClock

ERROR_EXTENSIONS = ("knativeerrordest", "knativeerrorcode", "knativeerrordata")


def answer(status, body=b"", headers=None):
    return lambda request: (status, headers or {}, body)


def dls(retry=None, **more):
    delivery = {"deadLetterSink": ref("dead"), **more}
    if retry is not None:
        delivery["retry"] = retry
    return delivery


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_one(tmp_path, respond, delivery, broker_delivery=None, clock=None, headers=None):
    """Post one event through one Trigger; what the subscriber and the DLS received."""
    manifests = [broker(delivery=broker_delivery), trigger("t", ref("sub"), delivery=delivery)]
    clock = clock or FakeClock()
    with Subscriber(respond) as sub, Subscriber() as dead:
        services = {"sub": sub.url, "dead": dead.url}
        with running(tmp_path, manifests, services, clock) as (runner, server):
            response = post_event(server.broker_url, "t", data={"n": 1}, headers=headers)
            assert response.status_code == 202
            runner.wait_idle()
        return sub.received(), dead.received(), server


@pytest.mark.parametrize("status", [200, 202, 204])
def test_an_empty_2xx_is_done(tmp_path, status):
    received, dead, _ = run_one(tmp_path, answer(status), dls(retry=3))
    assert len(received) == 1
    assert dead == []


def test_a_reply_goes_back_into_the_broker_with_the_ttl_it_had(tmp_path):
    manifests = [
        broker(),
        trigger("first", ref("first"), {"type": "a"}),
        trigger("second", ref("second"), {"type": "b"}, delivery=dls()),
    ]
    with (
        Subscriber(lambda r: reply_with("b", "img-1", step=1)) as first,
        Subscriber(answer(400)) as second,
        Subscriber() as dead,
    ):
        services = {"first": first.url, "second": second.url, "dead": dead.url}
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "a", headers={"ce-knativebrokerttl": "100"})
            runner.wait_idle()
    assert first.types() == ["a"]
    assert second.types() == ["b"]
    # The reply passed the ingress twice: 100 -> 99 for the original, 99 -> 98 for the reply.
    [dead_letter] = dead.received()
    assert dead_letter.attributes["type"] == "b"
    assert dead_letter.attributes["knativebrokerttl"] == "98"


def test_a_new_event_starts_with_ttl_255(tmp_path):
    received, dead, _ = run_one(tmp_path, answer(400), dls())
    assert dead[0].attributes["knativebrokerttl"] == "255"


def test_a_non_integer_ttl_starts_again_at_255(tmp_path):
    headers = {"ce-knativebrokerttl": "many"}
    received, dead, _ = run_one(tmp_path, answer(400), dls(), headers=headers)
    assert dead[0].attributes["knativebrokerttl"] == "255"


def test_a_reply_loop_is_cut_after_255_passes_through_the_broker(tmp_path):
    manifests = [broker(), trigger("loop", ref("loop"), {"type": "loop"}, delivery=dls())]
    with Subscriber(lambda r: reply_with("loop", "img-1")) as loop, Subscriber() as dead:
        services = {"loop": loop.url, "dead": dead.url}
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "loop")
            runner.wait_idle(30)
    assert len(loop.received()) == 255
    [dead_letter] = dead.received()
    assert dead_letter.attributes["knativebrokerttl"] == "1"
    assert dead_letter.attributes["knativeerrordest"] == server.broker_url
    assert dead_letter.attributes["knativeerrorcode"] == "400"


def test_a_2xx_body_that_is_not_a_cloudevent_fails_is_retried_and_dead_lettered(tmp_path):
    not_an_event = answer(200, b"OK", {"Content-Type": "text/html"})
    received, dead, _ = run_one(tmp_path, not_an_event, dls(retry=2))
    assert len(received) == 3
    [dead_letter] = dead
    assert not set(ERROR_EXTENSIONS) & set(dead_letter.attributes)


@pytest.mark.parametrize("bad", [{"ce-image-id": "x"}, {"ce-time": "yesterday"}])
def test_a_reply_that_cannot_be_decoded_is_a_502_failure(tmp_path, bad):
    headers = {"ce-specversion": "1.0", "ce-id": "r", "ce-source": "/s", "ce-type": "r", **bad}
    received, dead, _ = run_one(tmp_path, answer(200, b"{}", headers), dls(retry=1))
    assert len(received) == 2
    assert len(dead) == 1


def test_an_invalid_reply_is_refused_by_the_ingress_and_the_original_dead_lettered(tmp_path):
    blank_id = {"Content-Type": "application/cloudevents+json"}
    body = b'{"specversion": "1.0", "id": " ", "source": "/s", "type": "r"}'
    received, dead, server = run_one(tmp_path, answer(200, body, blank_id), dls(retry=3))
    assert len(received) == 1
    [dead_letter] = dead
    assert dead_letter.attributes["type"] == "t"  # the original, not the reply
    assert dead_letter.attributes["knativeerrordest"] == server.broker_url
    assert dead_letter.attributes["knativeerrorcode"] == "400"


@pytest.mark.parametrize("status", [500, 502, 503, 404, 408, 409, 429])
def test_retried_statuses_use_every_attempt(tmp_path, status):
    received, dead, _ = run_one(tmp_path, answer(status), dls(retry=3))
    assert len(received) == 4
    assert dead[0].attributes["knativeerrorcode"] == str(status)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
def test_other_client_errors_go_straight_to_the_dead_letter_sink(tmp_path, status):
    received, dead, _ = run_one(tmp_path, answer(status), dls(retry=3))
    assert len(received) == 1
    assert dead[0].attributes["knativeerrorcode"] == str(status)


def test_the_dead_letter_sink_gets_the_original_event_and_the_error(tmp_path):
    received, dead, _ = run_one(tmp_path, answer(500, b"disk full"), dls(retry=1))
    [dead_letter] = dead
    sent = received[0].attributes
    attributes = dead_letter.attributes
    for name in ("id", "source", "type", "subject", "knativearrivaltime"):
        assert attributes[name] == sent[name]
    assert attributes["knativebrokerttl"] == "255"
    assert dead_letter.body == received[0].body
    assert attributes["knativeerrordest"] == f"http://{received[0].headers['host']}"
    assert attributes["knativeerrorcode"] == "500"
    assert base64.b64decode(attributes["knativeerrordata"]) == b"disk full"
    assert "prefer" not in dead_letter.headers


def test_error_data_is_at_most_1024_base64_characters(tmp_path):
    body = bytes(range(256)) * 8
    _, dead, _ = run_one(tmp_path, answer(503, body), dls())
    data = dead[0].attributes["knativeerrordata"]
    assert len(data) == 1024
    assert base64.b64decode(data) == body[:768]


def test_no_response_is_retried_and_dead_lettered_as_a_500_dispatch_error(tmp_path):
    manifests = [broker(), trigger("t", ref("gone"), delivery=dls(retry=2))]
    clock = FakeClock()
    gone = closed_port_url()
    with Subscriber() as dead:
        services = {"gone": gone, "dead": dead.url}
        with running(tmp_path, manifests, services, clock) as (runner, server):
            post_event(server.broker_url, "t")
            runner.wait_idle()
    [dead_letter] = dead.received()
    assert dead_letter.attributes["knativeerrordest"] == gone
    assert dead_letter.attributes["knativeerrorcode"] == "500"
    data = base64.b64decode(dead_letter.attributes["knativeerrordata"])
    assert data.startswith(b"dispatch error")
    assert len(clock.sleeps) == 2


def test_a_timed_out_trigger_delivery_reaches_the_dls_without_error_extensions(tmp_path):
    answer_late = threading.Event()

    def too_slow(request):
        answer_late.wait(10)  # well past the timeout; released when the test is done
        return 202, {}, b""

    received, dead, _ = run_one(tmp_path, too_slow, dls(retry=1, timeout="PT0.3S"))
    answer_late.set()
    assert len(received) == 2
    [dead_letter] = dead
    assert not set(ERROR_EXTENSIONS) & set(dead_letter.attributes)


def test_without_any_dead_letter_sink_an_exhausted_event_is_dropped(tmp_path):
    received, dead, _ = run_one(tmp_path, answer(500), {"retry": 1})
    assert len(received) == 2
    assert dead == []


BACKOFF = {
    "exponential": ({"backoffPolicy": "exponential", "backoffDelay": "PT0.5S"}, [0.5, 1, 2, 4]),
    "linear": ({"backoffPolicy": "linear", "backoffDelay": "PT0.5S"}, [0, 0.5, 1, 1.5]),
    "no policy": ({"backoffDelay": "PT0.5S"}, [0, 0, 0, 0]),
    "no delay": ({"backoffPolicy": "exponential"}, [0, 0, 0, 0]),
}


@pytest.mark.parametrize("backoff, waits", BACKOFF.values(), ids=BACKOFF.keys())
def test_waits_between_attempts_follow_the_backoff_policy(tmp_path, backoff, waits):
    clock = FakeClock()
    received, _, _ = run_one(tmp_path, answer(500), {"retry": 4, **backoff}, clock=clock)
    assert len(received) == 5
    assert clock.sleeps == pytest.approx(waits)


def test_a_broker_without_delivery_retries_10_times_exponentially_from_200ms(tmp_path):
    clock = FakeClock()
    received, dead, _ = run_one(tmp_path, answer(503), None, broker_delivery=None, clock=clock)
    assert len(received) == 11
    assert clock.sleeps == pytest.approx([0.2 * 2**k for k in range(10)])


def test_a_trigger_delivery_replaces_the_brokers_retries_but_not_its_dead_letter_sink(tmp_path):
    clock = FakeClock()
    broker_delivery = {"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT1S"}
    broker_delivery["deadLetterSink"] = ref("dead")
    received, dead, _ = run_one(tmp_path, answer(500), {"retry": 1}, broker_delivery, clock)
    assert len(received) == 2
    assert clock.sleeps == [0]  # the Trigger sets no backoff, and the Broker's is not merged in
    assert len(dead) == 1  # the Broker's dead-letter sink


def test_a_trigger_with_only_a_dead_letter_sink_gets_no_retries(tmp_path):
    broker_delivery = {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT1S"}
    received, dead, _ = run_one(tmp_path, answer(500), dls(), broker_delivery)
    assert len(received) == 1
    assert len(dead) == 1


def test_the_broker_delivery_applies_when_the_trigger_has_none(tmp_path):
    clock = FakeClock()
    broker_delivery = dls(retry=2, backoffPolicy="exponential", backoffDelay="PT2S")
    received, dead, _ = run_one(tmp_path, answer(500), None, broker_delivery, clock)
    assert len(received) == 3
    assert clock.sleeps == [2, 4]
    assert len(dead) == 1


# Waiting for a retry is scheduled, as in Knative's dispatcher: it holds no delivery worker. These
# run on the real clock: a fake one would end every wait at once and hide the difference.
WAIT_A_MINUTE = {"retry": 1, "backoffPolicy": "exponential", "backoffDelay": "PT60S"}


class WatchedClock(WallClock):
    """The real clock, also telling the test each time a delivery starts waiting to retry."""

    def __init__(self) -> None:
        super().__init__()
        self._waits = threading.Semaphore(0)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        super().call_later(seconds, callback)
        self._waits.release()

    def wait_for_waits(self, count: int) -> None:
        for _ in range(count):
            assert self._waits.acquire(timeout=10), "a delivery never started waiting"


def test_deliveries_waiting_to_retry_do_not_hold_up_another_triggers_event(tmp_path):
    workers = 4
    failing = 3 * workers  # more than the pool: were each wait to hold a worker, none would be free
    manifests = [
        broker(),
        trigger("down", ref("down"), {"type": "down"}, delivery=WAIT_A_MINUTE),
        trigger("up", ref("up"), {"type": "up"}),
    ]
    clock = WatchedClock()
    with Subscriber(answer(503)) as down, Subscriber() as up:
        services = {"down": down.url, "up": up.url}
        with running(tmp_path, manifests, services, clock, workers) as (runner, server):
            for _ in range(failing):
                post_event(server.broker_url, "down")
            clock.wait_for_waits(failing)  # every first attempt failed: each now waits 60 s
            post_event(server.broker_url, "up")
            up.wait_for(1)  # TimeoutError after 10 s if the waits held the workers
            assert len(down.received()) == failing  # delivered while all of them still wait
            with pytest.raises(TimeoutError):
                runner.wait_idle(0.1)  # a delivery waiting to retry is still pending
    clock.close()  # an injected clock is its owner's to close


def test_stopping_abandons_the_waiting_retries_at_once_and_logs_each(tmp_path, caplog):
    manifests = [broker(), trigger("down", ref("down"), delivery=WAIT_A_MINUTE)]
    clock = WatchedClock()
    with (
        Subscriber(answer(503)) as down,
        running(tmp_path, manifests, {"down": down.url}, clock) as (runner, server),
    ):
        for subject in ("img-1", "img-2"):
            post_event(server.broker_url, "t", subject=subject)
        clock.wait_for_waits(2)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "workflows.runner"):
            server.stop()
        assert time.monotonic() - started < 5  # not the 60 s the retries were waiting for
        runner.wait_idle(0)  # nothing is left pending
    clock.close()
    abandoned = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert sorted(message.split()[3] for message in abandoned) == ["subject=img-1", "subject=img-2"]
    assert len(down.received()) == 2  # and no retry was made


def test_on_the_real_clock_each_retry_waits_its_backoff(tmp_path):
    arrivals: list[float] = []

    def failing(request):
        arrivals.append(time.monotonic())
        return 503, {}, b""

    clock = WallClock()
    delivery = dls(retry=2, backoffPolicy="exponential", backoffDelay="PT0.1S")
    try:
        received, dead, _ = run_one(tmp_path, failing, delivery, clock=clock)
    finally:
        clock.close()  # an injected clock is its owner's to close
    assert len(received) == 3
    first_wait, second_wait = (later - earlier for earlier, later in pairwise(arrivals))
    assert first_wait >= 0.1
    assert second_wait >= 0.2
    assert len(dead) == 1


def test_the_wall_clock_calls_back_when_due_not_in_the_order_of_scheduling():
    clock = WallClock()
    late, soon = threading.Event(), threading.Event()
    clock.call_later(60, late.set)
    clock.call_later(0.05, soon.set)
    try:
        assert soon.wait(10)  # not held behind the call scheduled first
        assert not late.is_set()
    finally:
        clock.close()  # joins the timer thread: what was not yet due never runs
    assert not late.is_set()
