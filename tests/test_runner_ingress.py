"""The runner's broker ingress against Knative's (docs/knative.md §2 and §11.1–2)."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from imagerec.events import BATCH, LABELLED, REJECTED, encode, event_data, event_schema, new_event
from tests.runner_support import (
    FakeClock,
    Subscriber,
    accept,
    broker,
    post_event,
    ref,
    running,
    trigger,
)
from workflows.runner import MAX_EVENT_BYTES

EVERYTHING = [broker(), trigger("all", ref("sink"))]


def good_headers() -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": "e1",
        "ce-source": "/tests",
        "ce-type": "t",
        "Content-Type": "application/json",
    }


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_binary_and_structured_events_are_accepted_with_202_and_an_empty_body(tmp_path, structured):
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        response = post_event(srv.broker_url, "t", data={"n": 1}, structured=structured)
        runner.wait_idle()
    assert (response.status_code, response.content) == (202, b"")
    [received] = sink.received()
    assert received.attributes["type"] == "t"
    assert json.loads(received.body) == {"n": 1}


def _batch() -> tuple[dict[str, str], bytes]:
    _, body = encode(new_event("t", "/tests", {}), structured=True)
    return {"Content-Type": BATCH}, b"[" + body + b"]"


def _without(name: str) -> tuple[dict[str, str], bytes]:
    headers = good_headers()
    del headers[name]
    return headers, b"{}"


def _with(name: str, value: str) -> tuple[dict[str, str], bytes]:
    return {**good_headers(), name: value}, b"{}"


def _structured(**changes: object) -> tuple[dict[str, str], bytes]:
    envelope = {"specversion": "1.0", "id": "e1", "source": "/tests", "type": "t", **changes}
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(envelope).encode()


REFUSED = {
    "batch": _batch(),
    "not a CloudEvent": ({"Content-Type": "application/json"}, b'{"imageId": "x"}'),
    "not structured (+jsonx)": ({"Content-Type": "application/cloudevents+jsonx"}, b"{}"),
    "structured, not JSON": ({"Content-Type": "application/cloudevents+json"}, b"{nope"),
    "no id": _without("ce-id"),
    "empty id": _with("ce-id", ""),
    "percent-encoded blank id": _with("ce-id", "%20"),
    "blank id": _structured(id="  "),
    "blank source": _structured(source=" "),
    "blank type (structured)": _structured(type="\t"),
    "camelCase extension (structured)": _structured(imageId="x"),
    "no type": _without("ce-type"),
    "dashed extension name": _with("ce-image-id", "x"),
    "underscored extension name": _with("ce-image_id", "x"),
    "time not RFC 3339": _with("ce-time", "yesterday"),
    "time without offset": _with("ce-time", "2026-01-01T10:00:00"),
    "empty subject": _with("ce-subject", ""),
    "relative dataschema": _with("ce-dataschema", "/schemas/t.json"),
    "id not a string (structured)": _structured(id=7),
    "extension not a scalar (structured)": _structured(tags=["a"]),
    "exhausted TTL": _with("ce-knativebrokerttl", "1"),
    "TTL zero": _with("ce-knativebrokerttl", "0"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_what_knative_refuses_gets_400_and_reaches_nobody(tmp_path, case):
    headers, body = case
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        response = requests.post(srv.broker_url, data=body, headers=headers, timeout=5)
        runner.wait_idle()
    assert (response.status_code, response.content) == (400, b"")
    assert sink.received() == []


PATHS = {
    "/": 404,
    "/imagerec/nope": 404,
    "/other/default": 404,
    "/imagerec/default?x=1": 404,  # the query is part of the name looked up
    "/imagerec": 400,
    "/imagerec/default/extra": 400,
    "/imagerec/default/": 202,
}


@pytest.mark.parametrize("path, status", PATHS.items())
def test_paths_are_answered_like_the_broker_ingress(tmp_path, path, status):
    with running(tmp_path, EVERYTHING, {"sink": "http://127.0.0.1:9"}) as (runner, srv):
        response = post_event(srv.url + path, "t")
    assert (response.status_code, response.content) == (status, b"")


def test_an_invalid_event_to_an_unknown_broker_is_400_not_404(tmp_path):
    with running(tmp_path, EVERYTHING, {"sink": "http://127.0.0.1:9"}) as (_, srv):
        response = requests.post(srv.url + "/imagerec/nope", data=b"{}", timeout=5)
    assert response.status_code == 400


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_methods_other_than_post_get_405(tmp_path, method):
    with running(tmp_path, EVERYTHING, {"sink": "http://127.0.0.1:9"}) as (_, srv):
        response = requests.request(method, srv.broker_url, timeout=5)
    assert response.status_code == 405


def test_options_advertises_the_webhook(tmp_path):
    with running(tmp_path, EVERYTHING, {"sink": "http://127.0.0.1:9"}) as (_, srv):
        response = requests.options(srv.broker_url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert response.headers["WebHook-Allowed-Origin"] == "*"
    assert response.headers["WebHook-Allowed-Rate"] == "*"


def test_subscribers_get_binary_mode_with_prefer_reply_and_only_pass_through_headers(tmp_path):
    producer_headers = {
        "Authorization": "Bearer secret",
        "X-User-Id": "7",
        "Cookie": "session=1",
        "X-Request-Id": "req-1",
        "Knative-Trace": "k",
        "X-B3-TraceId": "b3",
    }
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        post_event(
            srv.broker_url,
            "t",
            subject="img 1",
            data={"n": 1},
            structured=True,
            headers=producer_headers,
        )
        runner.wait_idle()
    [received] = sink.received()
    headers = received.headers
    assert headers["prefer"] == "reply"
    assert headers["kn-namespace"] == "imagerec"
    assert headers["content-type"] == "application/json"
    assert headers["ce-subject"] == "img%201"  # percent-encoded, as the binding says
    assert received.attributes["subject"] == "img 1"
    assert json.loads(received.body) == {"n": 1}
    assert (headers["x-request-id"], headers["knative-trace"], headers["x-b3-traceid"]) == (
        "req-1",
        "k",
        "b3",
    )
    for dropped in ("authorization", "x-user-id", "cookie"):
        assert dropped not in headers


def test_arrival_time_is_set_and_the_ttl_is_kept_from_subscribers(tmp_path):
    clock = FakeClock()
    with (
        Subscriber() as sink,
        running(tmp_path, EVERYTHING, {"sink": sink.url}, clock) as (runner, srv),
    ):
        post_event(srv.broker_url, "t")
        runner.wait_idle()
    [received] = sink.received()
    assert received.attributes["knativearrivaltime"] == clock.now().isoformat().replace(
        "+00:00", "Z"
    )
    assert "knativebrokerttl" not in received.attributes


def test_the_producer_is_answered_before_the_subscriber_is_done(tmp_path):
    release = threading.Event()

    def slow(request):
        release.wait(10)
        return accept(request)

    with Subscriber(slow) as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (r, srv):
        response = post_event(srv.broker_url, "t")
        assert response.status_code == 202
        with pytest.raises(TimeoutError):
            r.wait_idle(0.2)
        release.set()
        r.wait_idle()
    assert len(sink.received()) == 1


def test_delivery_format_json_sends_structured_mode(tmp_path):
    manifests = [broker(), trigger("all", ref("sink"), delivery={"format": "json"})]
    with Subscriber() as sink, running(tmp_path, manifests, {"sink": sink.url}) as (runner, srv):
        post_event(srv.broker_url, "t", data={"n": 2})
        runner.wait_idle()
    [received] = sink.received()
    assert received.headers["content-type"].startswith("application/cloudevents+json")
    envelope = json.loads(received.body)
    assert (envelope["type"], envelope["data"]) == ("t", {"n": 2})
    assert "ce-type" not in received.headers


# -- the body limit: events carry metadata, never images ---------------------------------------

HEAD = (
    "POST /ns/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: e1\r\n"
    "ce-source: /tests\r\nce-type: t\r\nContent-Type: application/json\r\n"
)


def _answer_without_sending_the_body(url: str, head: str, first_bytes: bytes) -> bytes:
    """Send the head and a little of the body, keep the connection open, read the answer:
    a server that waited for the rest would time out here."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(head.encode() + b"\r\n" + first_bytes)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
        return answer


@pytest.mark.parametrize("framing", ["Content-Length", "chunked"])
def test_an_event_over_the_limit_is_413_unread_and_reaches_nobody(tmp_path, framing):
    if framing == "Content-Length":
        head, start = HEAD + f"Content-Length: {MAX_EVENT_BYTES + 1}\r\n", b"{"
    else:
        head = HEAD + "Transfer-Encoding: chunked\r\n"
        start = f"{MAX_EVENT_BYTES + 1:x}\r\n{{".encode()
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        answer = _answer_without_sending_the_body(srv.broker_url, head, start)
        runner.wait_idle()
        assert sink.received() == []
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in answer


def test_an_event_at_the_limit_is_still_taken(tmp_path):
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        headers, body = encode(new_event("t", "/tests", {"pad": ""}))
        body = body[:-2] + b"x" * (MAX_EVENT_BYTES - len(body)) + b'"}'
        assert len(body) == MAX_EVENT_BYTES
        response = requests.post(srv.broker_url, data=body, headers=headers, timeout=10)
        runner.wait_idle()
    assert response.status_code == 202


def _at_the_bounds(schema: dict, value):
    """`value` with every free-text string at its longest, in the costliest characters JSON
    can carry (astral ones, escaped as 12 bytes), and every list at its longest."""
    if schema.get("type") == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _at_the_bounds(props.get(k, {}), v) for k, v in value.items()}
    if schema.get("type") == "array" and isinstance(value, list) and value:
        item = _at_the_bounds(schema.get("items", {}), value[0])
        return [item] * schema.get("maxItems", len(value))
    if (
        isinstance(value, str)
        and "maxLength" in schema
        and schema.get("pattern", "^[^").startswith("^[^")
    ):
        return "\U0001f600" * schema["maxLength"]
    return value


@pytest.mark.parametrize("event_type", [LABELLED, REJECTED])
def test_the_largest_event_the_schemas_allow_fits_well_under_the_limit(event_type):
    upload = {
        "imageId": "i" * 64,
        "userId": 2**31 - 1,
        "albumId": 2**31 - 1,
        "blobKey": "k" * 400,
        "fileName": "f",
        "contentType": "c",
        "size": 2**53 - 1,
    }
    if event_type == REJECTED:
        data = {**upload, "reason": "r"}
    else:
        data = {
            **upload,
            "metadata": {
                "creationTime": "2024-05-01T10:00:00+02:00",
                "geo": None,
                "exifMake": "m",
                "exifModel": "m",
                "dimensions": {"width": 2**31 - 1, "height": 2**31 - 1},
                "orientation": 8,
                "fileSize": 2**53 - 1,
                "format": "JPEG",
                "contentHash": "a" * 64,
            },
            "thumbnailKey": "t" * 512,
            "detections": [{"label": "l", "score": 0.123456789, "box": [0.1] * 4}],
            "labels": [{"label": "l", "score": 0.123456789}],
            "model": "m",
        }
    data = _at_the_bounds(event_schema(event_type), data)
    event = new_event(event_type, "/functions/store-results", data, subject=data["imageId"])
    assert event_data(event) == data  # schema-valid
    for structured in (False, True):
        headers, body = encode(event, structured)
        assert len(body) + sum(len(k) + len(v) for k, v in headers.items()) < MAX_EVENT_BYTES / 2
