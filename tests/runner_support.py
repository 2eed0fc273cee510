"""Test support for the runner (and for tests of whatever runs behind it).

- `FakeClock`: a retry's wait is over at once; each wait is recorded in `.sleeps`, so backoffs
  are checked exactly without waiting, and `now()` moves forward by it.
- `Subscriber(respond)`: a real HTTP server on 127.0.0.1 that records each request (`.received()`,
  `.types()`, `.wait_for(count)`) and answers with `respond(request) -> (status, headers, body)`;
  `reply_with(...)` builds a 200 carrying a CloudEvent reply.
- `running(folder, manifests, services, clock, workers)`: a served runner over manifests written
  to a folder; `post_event(url, type, ...)` posts as a producer does.
- `broker()`, `trigger()`, `sequence()`, `parallel()`, `ref()`: manifest documents as dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from textwrap import dedent
from typing import Any
from urllib.parse import unquote

import requests
import yaml

from imagerec.events import encode, new_event
from workflows.delivery import Clock
from workflows.manifests import ASYNC_HANDLER
from workflows.runner import Runner, Server


class FakeClock:
    """Records each wait and moves `now()` forward by it, then calls back at once."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += timedelta(seconds=seconds)
        callback()


@dataclass(frozen=True)
class Request:
    """What a subscriber received: method, path, headers (names lowercased) and body."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    peer: tuple[str, int] | None = None  # the client's address: which connection it came on

    @property
    def attributes(self) -> dict[str, str]:
        """The CloudEvent attributes of a binary-mode request (ce-* headers, decoded)."""
        attributes = {
            name[3:]: unquote(value)
            for name, value in self.headers.items()
            if name.startswith("ce-")
        }
        if "content-type" in self.headers:
            attributes["datacontenttype"] = self.headers["content-type"]
        return attributes


Response = tuple[int, Mapping[str, str], bytes]


def accept(request: Request) -> Response:
    return 202, {}, b""


def reply_with(event_type: str, subject: str | None = None, **data: object) -> Response:
    """A 200 answer carrying a binary-mode CloudEvent reply."""
    headers, body = encode(new_event(event_type, "/tests", dict(data), subject))
    return 200, headers, body


class Subscriber:
    """An HTTP server on 127.0.0.1 that records every request and answers with `respond`."""

    def __init__(self, respond: Callable[[Request], Response] = accept) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self._arrived = threading.Condition()
        handler = type("Handler", (_SubscriberHandler,), {"subscriber": self})
        self._httpd = _SubscriberServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def received(self) -> list[Request]:
        with self._arrived:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """The first `count` requests, once they have arrived; TimeoutError if they do not."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} of {count} requests after {timeout}s")
            return self.requests[:count]

    def types(self) -> list[str | None]:
        return [request.attributes.get("type") for request in self.received()]

    def _record(self, request: Request) -> Response:
        with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()
        return self.respond(request)


class _SubscriberServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the runner's workers may all call at once


class _SubscriberHandler(BaseHTTPRequestHandler):
    subscriber: Subscriber
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, reply_headers, reply = self.subscriber._record(
            Request("POST", self.path, headers, body, self.client_address[:2])
        )
        try:
            self.send_response(status)
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except ConnectionError:
            pass  # the runner gave up waiting (a timeout test): nobody reads the answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def post_event(
    url: str,
    event_type: str,
    subject: str | None = "img-1",
    data: dict | None = None,
    structured: bool = False,
    headers: Mapping[str, str] | None = None,
) -> requests.Response:
    """POST a new event as a producer would; the response is returned whatever its status."""
    event_headers, body = encode(new_event(event_type, "/tests", data or {}, subject), structured)
    return requests.post(url, data=body, headers={**event_headers, **(headers or {})}, timeout=10)


@contextmanager
def running(
    folder: Path,
    manifests: str | list[dict[str, Any]],
    services: Mapping[str, str],
    clock: Clock | None = None,
    workers: int = 64,
    trusted_sources: Collection[str] | None = None,
) -> Iterator[tuple[Runner, Server]]:
    """A runner serving the given manifests (YAML text or documents) on a free port."""
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(manifests, str):
        manifests = yaml.safe_dump_all(manifests, sort_keys=False)
    (folder / "routing.yaml").write_text(dedent(manifests))
    runner = Runner.from_manifests(folder, services, clock, workers, trusted_sources)
    server = runner.serve("127.0.0.1", 0)
    try:
        yield runner, server
    finally:
        server.stop()


# Manifest documents, as dicts, for tests that build their own routing in a tmp folder.
NAMESPACE = "imagerec"
_API_VERSIONS = {
    "Service": "serving.knative.dev/v1",
    "Broker": "eventing.knative.dev/v1",
    "Trigger": "eventing.knative.dev/v1",
    "Sequence": "flows.knative.dev/v1",
    "Parallel": "flows.knative.dev/v1",
}


def ref(name: str, kind: str = "Service", uri: str | None = None) -> dict[str, Any]:
    destination: dict[str, Any] = {
        "ref": {"apiVersion": _API_VERSIONS[kind], "kind": kind, "name": name}
    }
    if uri is not None:
        destination["uri"] = uri
    return destination


def _document(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": _API_VERSIONS[kind],
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {key: value for key, value in spec.items() if value is not None},
    }


def broker(
    name: str = "default", delivery: dict[str, Any] | None = None, asynchronous: bool = True
) -> dict[str, Any]:
    """A Broker; asynchronous (the annotation on) unless told otherwise, as knative/ deploys."""
    document = _document("Broker", name, {"delivery": delivery})
    if asynchronous:
        document["metadata"]["annotations"] = {ASYNC_HANDLER: "true"}
    return document


def trigger(
    name: str,
    subscriber: dict[str, Any],
    attributes: dict[str, str] | None = None,
    filters: list[dict[str, Any]] | None = None,
    delivery: dict[str, Any] | None = None,
    broker: str = "default",
) -> dict[str, Any]:
    return _document(
        "Trigger",
        name,
        {
            "broker": broker,
            "filter": None if attributes is None else {"attributes": attributes},
            "filters": filters,
            "subscriber": subscriber,
            "delivery": delivery,
        },
    )


def sequence(
    name: str,
    steps: list[dict[str, Any]],
    reply: dict[str, Any] | None = None,
    channel_delivery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    template: dict[str, Any] = {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}
    if channel_delivery is not None:
        template["spec"] = {"delivery": channel_delivery}
    return _document(
        "Sequence", name, {"channelTemplate": template, "steps": steps, "reply": reply}
    )


def parallel(
    name: str, branches: list[dict[str, Any]], reply: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _document("Parallel", name, {"branches": branches, "reply": reply})
