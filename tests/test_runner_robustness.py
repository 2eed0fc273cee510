"""What the runner refuses that Knative would take and then lose or drop (broken HTTP framing,
events no subscriber can receive, foreign events on the internal hops), and its keep-alive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from textwrap import dedent

import pytest
import requests

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
from workflows.manifests import load_manifests
from workflows.runner import own_sources
from workflows.wire import MAX_HEADER_LINE

ROOT = Path(__file__).resolve().parents[1]
EVERYTHING = [broker(), trigger("all", ref("sink"))]
EVENT_HEADERS = (
    "ce-specversion: 1.0\r\nce-id: e1\r\nce-source: /tests\r\nce-type: t\r\n"
    "Content-Type: application/json\r\n"
)


def raw_request(url: str, head: str, body: bytes = b"") -> bytes:
    """Send bytes as they are (no client fixes the framing) and read the answer until close."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


FRAMING = {
    "Content-Length not a number": ("Content-Length: abc\r\n", b"{}"),
    "negative Content-Length": ("Content-Length: -1\r\n", b"{}"),
    "two Content-Lengths that disagree": ("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
    "body shorter than Content-Length": ("Content-Length: 10\r\n", b"{}"),
    "chunk size not hex": ("Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
    "chunk longer than its size": ("Transfer-Encoding: chunked\r\n", b"1\r\n{}\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("case", FRAMING.values(), ids=FRAMING.keys())
def test_malformed_framing_is_answered_400_not_dropped(tmp_path, case):
    framing, body = case
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        head = f"POST /imagerec/default HTTP/1.1\r\nHost: x\r\n{EVENT_HEADERS}{framing}"
        answer = raw_request(srv.url, head, body)
        runner.wait_idle()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Connection: close" in answer
    assert sink.received() == []


def test_a_well_framed_chunked_event_is_accepted(tmp_path):
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        head = f"POST /imagerec/default HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{EVENT_HEADERS}"
        head += "Transfer-Encoding: chunked\r\n"
        answer = raw_request(srv.url, head, b"2;x=y\r\n{}\r\n0\r\n\r\n")
        runner.wait_idle()
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    assert [r.body for r in sink.received()] == [b"{}"]


def extension_of_line_size(size: int) -> dict[str, str]:
    """A `ce-big` header whose line (`ce-big: value` + CRLF) takes exactly `size` bytes."""
    return {"ce-big": "x" * (size - len("ce-big: ") - 2)}


@pytest.mark.parametrize("size", [MAX_HEADER_LINE + 1, 60_000])
def test_an_extension_too_large_for_any_subscriber_is_refused_at_ingress(tmp_path, size):
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        response = post_event(srv.broker_url, "t", headers=extension_of_line_size(size))
        runner.wait_idle()
    assert response.status_code == 400
    assert "'big'" in response.text and f"at most {MAX_HEADER_LINE}" in response.text
    assert sink.received() == []


def test_an_event_with_too_many_headers_is_refused_at_ingress(tmp_path):
    many = {f"ce-x{i}": "1" for i in range(80)}  # under http.server's own 100
    with Subscriber() as sink, running(tmp_path, EVERYTHING, {"sink": sink.url}) as (runner, srv):
        response = post_event(srv.broker_url, "t", headers=many)
        runner.wait_idle()
    assert response.status_code == 400
    assert "HTTP headers" in response.text
    assert sink.received() == []


STEP_SOURCE = """
import functions_framework

@functions_framework.http
def step(request):
    return "", 202
"""


@pytest.fixture
def gunicorn_step(tmp_path):
    """A step served as functions-framework serves ours (gunicorn), answering 202."""
    source = tmp_path / "step.py"
    source.write_text(dedent(STEP_SOURCE))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--source", str(source), "--target", "step"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "THREADS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the step did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_the_largest_event_the_ingress_takes_is_received_by_a_gunicorn_step(
    tmp_path, gunicorn_step
):
    with (
        Subscriber() as dead,
        running(
            tmp_path,
            [broker(), trigger("all", ref("step"), delivery={"deadLetterSink": ref("dead")})],
            {"step": gunicorn_step, "dead": dead.url},
        ) as (runner, srv),
    ):
        largest = post_event(srv.broker_url, "t", headers=extension_of_line_size(MAX_HEADER_LINE))
        runner.wait_idle()
    assert largest.status_code == 202
    assert dead.received() == []  # gunicorn took it: nothing was dead-lettered
    # And one byte more is what gunicorn itself refuses, so the limit is not stricter than needed.
    line = extension_of_line_size(MAX_HEADER_LINE + 1)
    answer = requests.post(gunicorn_step, headers=line, data=b"{}", timeout=5)
    assert answer.status_code in (400, 431)


def sequence_manifests() -> list[dict]:
    return [
        broker(),
        trigger("start", ref("seq", "Sequence"), {"type": "start"}),
        sequence("seq", [ref("one"), ref("two")], ref("default", "Broker")),
        trigger("tail", ref("tail"), {"type": "done"}),
    ]


def test_internal_channels_refuse_events_from_foreign_sources(tmp_path):
    with Subscriber() as one, Subscriber() as two, Subscriber() as tail:
        services = {"one": one.url, "two": two.url, "tail": tail.url}
        trusted = {"/functions/one"}
        with running(
            tmp_path, sequence_manifests(), services, FakeClock(), trusted_sources=trusted
        ) as (runner, srv):
            channel = srv.url + "/channels/imagerec/seq-kn-sequence-1"
            forged = post_event(channel, "done")  # source /tests
            runner.wait_idle()
            ours = post_event(channel, "done", headers={"ce-source": "/functions/one"})
            runner.wait_idle()
    assert forged.status_code == 403
    assert "'/tests'" in forged.text
    assert ours.status_code == 202
    assert [r.attributes["source"] for r in two.received()] == ["/functions/one"]


def test_a_reply_from_a_foreign_source_is_dead_lettered_not_forwarded(tmp_path):
    manifests = [
        broker(),
        trigger("t", ref("sub"), {"type": "t"}, delivery={"deadLetterSink": ref("dead")}),
        trigger("next", ref("tail"), {"type": "next"}),
    ]
    forged = lambda request: reply_with("next", "img-1")  # noqa: E731 (source /tests)
    with Subscriber(forged) as sub, Subscriber() as tail, Subscriber() as dead:
        services = {"sub": sub.url, "tail": tail.url, "dead": dead.url}
        with running(
            tmp_path, manifests, services, FakeClock(), trusted_sources={"/functions/sub"}
        ) as (runner, srv):
            post_event(srv.broker_url, "t")
            runner.wait_idle()
    assert tail.received() == []
    assert [r.attributes["type"] for r in dead.received()] == ["t"]


def test_our_sources_are_the_knative_services_of_the_manifests():
    sources = own_sources(load_manifests(ROOT / "knative"))
    assert "/functions/extract-metadata" in sources
    assert "/functions/store-results" in sources
    assert "/web" not in sources  # the web only sends to the Broker, never to a channel


def test_deliveries_reuse_keep_alive_connections(tmp_path):
    with (
        Subscriber() as sink,
        running(tmp_path, EVERYTHING, {"sink": sink.url}, workers=1) as (
            runner,
            srv,
        ),
    ):
        for _ in range(20):
            post_event(srv.broker_url, "t")
            runner.wait_idle()
    received = sink.received()
    assert len(received) == 20
    assert len({request.peer for request in received}) == 1


def test_a_connection_the_subscriber_closed_is_not_reused(tmp_path):
    close = lambda request: (202, {"Connection": "close"}, b"")  # noqa: E731
    with (
        Subscriber(close) as sink,
        running(tmp_path, EVERYTHING, {"sink": sink.url}, workers=1) as (runner, srv),
    ):
        for _ in range(3):
            post_event(srv.broker_url, "t")
            runner.wait_idle()
    assert len({request.peer for request in sink.received()}) == 3


def test_a_keep_alive_connection_closed_as_it_is_reused_is_retried_once_on_a_new_one():
    """The server answers the first request on each connection (keeping it open) and drops the
    second unanswered, as one whose keep-alive ran out just as the request arrived."""
    from workflows.connections import Connections

    server = socket.create_server(("127.0.0.1", 0))
    answered = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                for n in range(2):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if n == 1 or not data:
                        break  # the second request on this connection: closed, no answer
                    answered.append(data)
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/"
    connections = Connections()
    try:
        for _ in range(3):
            assert connections.post(url, {"Content-Length": "0"}, b"", timeout=5).status_code == 202
    finally:
        connections.close()
        server.close()
    assert len(answered) == 3
