"""A local HTTP server standing where a step's pod would.

It records every request, answers the first ones with the statuses in `statuses`, and then
either forwards the request to `upstream` (a real step's functions-framework server) and relays
its answer, reply event included, or answers 200 with no body. `delay` holds every answer, as a
slow step would."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Sink:
    ip: str
    delay: float = 0.0
    statuses: list[int] = field(default_factory=list)
    upstream: str | None = None
    always: int | None = None
    received: list[Received] = field(default_factory=list)

    def start(self) -> Sink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    if sink.always is not None:
                        status = sink.always
                    elif sink.statuses:
                        status = sink.statuses.pop(0)
                    else:
                        status = 0  # forward, or 200
                    sink.received.append(
                        Received(
                            time.monotonic(),
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            status,
                        )
                    )
                time.sleep(sink.delay)
                headers, reply = {}, b""
                if status == 0 and sink.upstream:
                    status, headers, reply = sink._forward(self.path, dict(self.headers), body)
                elif status == 0:
                    status = 200
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((self.ip, 80), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _forward(self, path: str, headers: dict[str, str], body: bytes):
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=330)
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request("POST", path, body=body, headers=sent)
        resp = conn.getresponse()
        reply = resp.read()
        kept = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
        conn.close()
        return resp.status, kept, reply

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
