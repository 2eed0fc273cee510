"""The HTTP server of the web and of every step: waitress, with deadlines for slow clients.

    python -m imagerec.serve --app 'web:create_app()' --port 8080 --threads 8
    python -m imagerec.serve --source functions/extract_metadata.py --target extract_metadata

The second form serves a step as `functions-framework` would (same options, `THREADS` from
the environment), on this server instead of functions-framework's gunicorn.

Why waitress: gunicorn's gthread worker reads a request's headers and body in the pool thread
that runs it, with no deadline, so eight clients sending a byte every few seconds held all
eight threads and nobody else was answered. waitress reads every request whole (headers and
body) on one event loop and hands a thread only a complete request, so a slow client holds a
buffer, never a thread. What it lacks is added here: a deadline for the request line and
headers (`HEADER_SECONDS`), whatever the trickle, and a question to the application, once the
headers are in, whether it will take a body of that size at all (`admit_request`): a body it
would refuse is then never read, let alone spooled to a temporary file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.utilities import Error

from imagerec.cpus import request_threads

log = logging.getLogger("imagerec.serve")

# The request line and headers (a few hundred bytes from any real client) must be in this
# soon after their first byte; a client trickling them is cut off then.
HEADER_SECONDS = 10
# A connection with nothing received or sent for this long is closed: a stalled body, or an
# idle kept-alive connection.
IDLE_SECONDS = 30
# How often the deadlines above are checked (they hold to within this).
CHECK_EVERY_SECONDS = 1
# Connections held at once, slow ones included; past this, new ones wait in the listen backlog.
# Each costs a socket and its buffers, not a thread.
CONNECTION_LIMIT = 1000
# The largest body any request may have; the application's `admit_request` lowers it per
# request. Beyond the read buffer, a body is spooled to a temporary file until complete.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Refusal:
    """The answer to a request refused once its headers are in, before its body is read."""

    status: int
    reason: str  # the status's phrase: "Request Entity Too Large"
    message: str  # one sentence for the client


@dataclass(frozen=True)
class RequestHead:
    """What is known of a request before its body: what `admit_request` decides on."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names as in a WSGI environ without HTTP_: CONTENT_LENGTH
    content_length: int  # 0 for a chunked body, which is held to `body_limit` as it arrives


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request's body may have, and the sentence a larger one is refused by."""

    max_bytes: int
    too_large: str


# An application may offer `admit_request(head)`: a Refusal, a BodyLimit for this request, or
# None for the server's own limit.
Admission = Callable[[RequestHead], Refusal | BodyLimit | None]


class _Adjustments(Adjustments):
    admit: Admission | None = None


class _Refused(Error):
    def __init__(self, refusal: Refusal, api: bool) -> None:
        super().__init__(refusal.message)
        self.code, self.reason, self.api = refusal.status, refusal.reason, api

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        # The application's own error format: JSON under /api/, a plain sentence elsewhere.
        if self.api:
            body = json.dumps({"error": self.body}).encode()
            return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        return f"{self.code} {self.reason}", headers, (self.body + "\n").encode()


def _too_large(message: str) -> Refusal:
    return Refusal(413, "Request Entity Too Large", message)


class _Request(HTTPRequestParser):
    """waitress's parser, with the time of the request's first byte and the admission check."""

    def __init__(self, adj: _Adjustments) -> None:
        super().__init__(adj)
        self.started = time.monotonic()
        self.body_limit: BodyLimit | None = None

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.adj.admit is None:
            return
        head = RequestHead(
            self.command, self.path, self.query, dict(self.headers), self.content_length
        )
        answer = self.adj.admit(head)
        if isinstance(answer, Refusal):
            self._refuse(answer)
        elif answer is not None:
            self.body_limit = answer
            if self.content_length > answer.max_bytes:
                self._refuse(_too_large(answer.too_large))

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        # A chunked body has no length up front: it is held to the limit as it comes.
        if (
            self.body_limit is not None
            and not self.error
            and self.body_bytes_received > self.body_limit.max_bytes
        ):
            self._refuse(_too_large(self.body_limit.too_large))
        return consumed

    def _refuse(self, refusal: Refusal) -> None:
        self.error = _Refused(refusal, self.path.startswith("/api/"))
        self.completed = True
        self.body_rcv = None  # what of the body has come is dropped; the connection closes


class _Channel(HTTPChannel):
    parser_class = _Request


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # the idle deadline (channel_timeout)
        cutoff = time.monotonic() - HEADER_SECONDS
        for channel in list(self.active_channels.values()):
            request = channel.request
            if request is not None and not request.headers_finished and request.started < cutoff:
                channel.will_close = True


def make_server(
    app: Any, host: str, port: int, threads: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> TcpWSGIServer:
    """A server for the WSGI `app` on host:port (port 0: a free one), not yet running."""
    adj = _Adjustments(
        host=host,
        port=port,
        threads=threads,
        channel_timeout=IDLE_SECONDS,
        cleanup_interval=CHECK_EVERY_SECONDS,
        connection_limit=CONNECTION_LIMIT,
        # poll(), not select(): select() cannot watch a socket numbered past 1023.
        asyncore_use_poll=True,
        max_request_body_size=max_body_bytes,
        # X-Forwarded-Proto from Knative's proxies is the application's to trust (ProxyFix).
        clear_untrusted_proxy_headers=False,
        ident="imagerec",
    )
    adj.admit = getattr(app, "admit_request", None)
    return _Server(app, map={}, adj=adj)


def _step_app(source: str, target: str) -> Any:
    import functions_framework

    return functions_framework.create_app(target, source, "http")


def _factory_app(spec: str) -> Any:
    """`module:factory()` or `module:name`, as gunicorn reads it."""
    import importlib

    module, _, name = spec.partition(":")
    call = name.endswith("()")
    obj = getattr(importlib.import_module(module), name.removesuffix("()"))
    return obj() if call else obj


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imagerec.serve", description=__doc__)
    parser.add_argument("--app", help="a WSGI app as module:name or module:factory()")
    parser.add_argument("--source", help="a step's source file (as functions-framework takes)")
    parser.add_argument("--target", help="the step's entry point in --source")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("THREADS") or request_threads())
    )
    args = parser.parse_args(argv)
    if bool(args.app) == bool(args.target):
        parser.error("give either --app, or --target (with --source) for a step")
    app = _factory_app(args.app) if args.app else _step_app(args.source, args.target)
    server = make_server(app, args.host, args.port, args.threads)
    # Logging is set up by now (the app's import or factory did it): a JSON line like the rest.
    log.info(
        "serving %s on http://%s:%s with %d threads",
        args.app or args.target,
        server.effective_host,
        server.effective_port,
        args.threads,
    )
    server.run()


if __name__ == "__main__":
    # Run as the imported module, not as __main__: the application's admit_request answers
    # with imagerec.serve's Refusal and BodyLimit, which must be the classes checked here.
    import imagerec.serve

    imagerec.serve.main()
