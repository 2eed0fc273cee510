"""A real HTTP server on 127.0.0.1 that records the CloudEvents posted to it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import CloudEvent

from imagerec.events import parse_event


class RecordingSink:
    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.events: list[CloudEvent] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                event = parse_event(dict(self.headers), body)
                sink.events.append(event)
                sink.on_event(event)
                self.send_response(sink.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/imagerec/default"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on_event(self, event: CloudEvent) -> None:
        """Called with each event before it is answered; a test may replace it."""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
