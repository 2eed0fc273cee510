"""Sequence and Parallel, wired as Knative wires them (docs/knative.md §5, §6, §11.7–8)."""

from __future__ import annotations

import json
import threading

from tests.runner_support import (
    FakeClock,
    Subscriber,
    accept,
    broker,
    parallel,
    post_event,
    ref,
    reply_with,
    running,
    sequence,
    trigger,
)


def reply(event_type):
    """A step that replies `event_type`, carrying its input's data forward plus its own mark."""

    def respond(request):
        data = json.loads(request.body or b"{}")
        return reply_with(event_type, request.attributes.get("subject"), **data, **{event_type: 1})

    return respond


TO_BROKER = ref("default", "Broker")


def pipeline(steps, reply_to=TO_BROKER, channel_delivery=None, tail_filter="done"):
    """A Broker whose `start` events run a Sequence, and a Trigger that catches its result."""
    return [
        broker(),
        trigger("start", ref("seq", "Sequence"), {"type": "start"}),
        sequence("seq", steps, reply_to, channel_delivery),
        trigger(
            "tail", ref("tail"), {"type": tail_filter}, delivery={"deadLetterSink": ref("dead")}
        ),
    ]


def test_each_step_gets_only_the_previous_reply_and_the_last_reply_goes_to_the_broker(tmp_path):
    steps = [ref("one"), ref("two"), ref("three")]
    with (
        Subscriber(reply("first")) as one,
        Subscriber(reply("second")) as two,
        Subscriber(reply("done")) as three,
        Subscriber() as tail,
        Subscriber() as dead,
    ):
        services = {"one": one.url, "two": two.url, "three": three.url}
        services |= {"tail": tail.url, "dead": dead.url}
        with running(tmp_path, pipeline(steps), services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "start", subject="img-9", data={"imageId": "img-9"})
            runner.wait_idle()
    assert (one.types(), two.types(), three.types()) == (["start"], ["first"], ["second"])
    [second_input] = two.received()
    assert json.loads(second_input.body) == {"imageId": "img-9", "first": 1}
    assert second_input.attributes["source"] == "/tests"
    assert "knativearrivaltime" not in second_input.attributes  # a new event, not the original
    [result] = tail.received()
    assert json.loads(result.body) == {"imageId": "img-9", "first": 1, "second": 1, "done": 1}
    assert result.attributes["subject"] == "img-9"


def test_the_sequence_reply_reaches_the_broker_with_a_fresh_ttl(tmp_path):
    refuse = lambda request: (400, {}, b"")  # noqa: E731
    with Subscriber(reply("done")) as one, Subscriber(refuse) as tail, Subscriber() as dead:
        services = {"one": one.url, "tail": tail.url, "dead": dead.url}
        with running(tmp_path, pipeline([ref("one")]), services, FakeClock()) as (r, srv):
            post_event(srv.broker_url, "start", headers={"ce-knativebrokerttl": "9"})
            r.wait_idle()
    assert dead.received()[0].attributes["knativebrokerttl"] == "255"


def test_a_step_without_a_reply_ends_the_sequence_silently(tmp_path):
    steps = [ref("one"), ref("two"), ref("three")]
    with (
        Subscriber(reply("first")) as one,
        Subscriber(accept) as two,
        Subscriber(reply("done")) as three,
        Subscriber() as tail,
        Subscriber() as dead,
    ):
        services = {"one": one.url, "two": two.url, "three": three.url}
        services |= {"tail": tail.url, "dead": dead.url}
        with running(tmp_path, pipeline(steps), services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "start")
            runner.wait_idle()
    assert (len(one.received()), len(two.received())) == (1, 1)
    assert three.received() == tail.received() == dead.received() == []


def test_a_non_cloudevent_body_from_a_step_is_no_reply_not_a_failure(tmp_path):
    ok_html = lambda request: (200, {"Content-Type": "text/html"}, b"OK")  # noqa: E731
    steps = [ref("one"), ref("two")]
    delivery = {"retry": 3, "deadLetterSink": ref("dead")}
    with Subscriber(ok_html) as one, Subscriber() as two, Subscriber() as dead:
        services = {"one": one.url, "two": two.url, "tail": two.url, "dead": dead.url}
        manifests = pipeline(steps, channel_delivery=delivery)
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "start")
            runner.wait_idle()
    assert len(one.received()) == 1
    assert two.received() == dead.received() == []


def test_the_last_step_without_a_sequence_reply_is_discarded(tmp_path):
    with Subscriber(reply("done")) as one, Subscriber() as tail, Subscriber() as dead:
        services = {"one": one.url, "tail": tail.url, "dead": dead.url}
        manifests = pipeline([ref("one")], reply_to=None)
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "start")
            runner.wait_idle()
    assert len(one.received()) == 1
    assert tail.received() == []


def test_steps_retry_by_their_own_delivery_else_the_channels(tmp_path):
    clock = FakeClock()
    own = {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT3S"}
    own["deadLetterSink"] = ref("own-dead")
    channel = {"retry": 2, "backoffPolicy": "exponential", "backoffDelay": "PT1S"}
    channel["deadLetterSink"] = ref("dead")
    steps = [{**ref("one"), "delivery": own}, ref("two")]
    failing = lambda request: (503, {}, b"")  # noqa: E731
    with (
        Subscriber(failing) as one,
        Subscriber(failing) as two,
        Subscriber() as own_dead,
        Subscriber() as dead,
    ):
        services = {"one": one.url, "two": two.url, "tail": two.url}
        services |= {"own-dead": own_dead.url, "dead": dead.url}
        manifests = pipeline(steps, channel_delivery=channel)
        with running(tmp_path, manifests, services, clock) as (runner, server):
            post_event(server.broker_url, "start")
            runner.wait_idle()
            assert (len(one.received()), clock.sleeps) == (2, [0])
            assert [r.attributes["type"] for r in own_dead.received()] == ["start"]

            # Step two (no delivery of its own) under the channel's: 3 attempts, 1 s then 2 s.
            clock.sleeps.clear()
            one.respond = reply("first")
            post_event(server.broker_url, "start")
            runner.wait_idle()
    assert len(two.received()) == 3
    assert clock.sleeps == [1, 2]
    [dead_letter] = dead.received()
    assert dead_letter.attributes["type"] == "first"  # the event that step received
    assert dead_letter.attributes["knativeerrorcode"] == "503"


def test_a_timed_out_step_reaches_the_dls_with_a_500(tmp_path):
    answer_late = threading.Event()

    def too_slow(request):
        answer_late.wait(10)  # well past the timeout; released when the test is done
        return 202, {}, b""

    delivery = {"timeout": "PT0.3S", "deadLetterSink": ref("dead")}
    with Subscriber(too_slow) as one, Subscriber() as dead:
        services = {"one": one.url, "tail": dead.url, "dead": dead.url}
        manifests = pipeline([{**ref("one"), "delivery": delivery}])
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "start")
            runner.wait_idle()
        answer_late.set()
    [dead_letter] = dead.received()
    assert dead_letter.attributes["knativeerrorcode"] == "500"
    assert dead_letter.attributes["knativeerrordest"] == one.url


def test_parallel_branches_filter_transform_and_reply(tmp_path):
    def keep_cats(request):
        if json.loads(request.body).get("animal") != "cat":
            return accept(request)
        return reply_with("cat", request.attributes.get("subject"), animal="cat", seen=True)

    branches = [
        {"filter": ref("cats-only"), "subscriber": ref("cat-branch")},
        {"subscriber": ref("all-branch"), "reply": ref("elsewhere")},
    ]
    manifests = [
        broker(),
        trigger("fan", ref("fan", "Parallel"), {"type": "animal"}),
        parallel("fan", branches, reply=ref("default", "Broker")),
        trigger("replies", ref("replies"), {"type": "branch-done"}),
    ]
    with (
        Subscriber(keep_cats) as cats_only,
        Subscriber(reply("branch-done")) as cat_branch,
        Subscriber(reply("other-done")) as all_branch,
        Subscriber() as elsewhere,
        Subscriber() as replies,
    ):
        services = {
            "cats-only": cats_only.url,
            "cat-branch": cat_branch.url,
            "all-branch": all_branch.url,
            "elsewhere": elsewhere.url,
            "replies": replies.url,
        }
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "animal", data={"animal": "dog"})
            post_event(server.broker_url, "animal", data={"animal": "cat"})
            runner.wait_idle()
    assert len(cats_only.received()) == 2
    [cat] = cat_branch.received()  # only what the filter returned, as it returned it
    assert cat.attributes["type"] == "cat"
    assert json.loads(cat.body) == {"animal": "cat", "seen": True}
    assert len(all_branch.received()) == 2
    assert elsewhere.types() == ["other-done", "other-done"]  # the branch's own reply
    assert replies.types() == ["branch-done"]  # the Parallel's reply, through the Broker
