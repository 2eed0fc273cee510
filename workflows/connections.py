"""Keep-alive HTTP/1.1 connections for the runner's deliveries, pooled per host.

A new TCP connection per hop cost the runner more than the hop itself: `Connections.post()`
reuses an idle connection to the same host when the server kept it open, checks that the server
has not closed it meanwhile, and follows redirects as Go's client does (307/308 POST again,
301/302/303 become a body-less GET). A `Cancel` aborts every request made under it at once by
shutting its socket down: the receiver sees the connection close, as a Go handler sees its
request's context cancelled (a synchronous channel passes that on to every hop below it).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 10  # Go's http.Client gives up after 10


class SendFailed(Exception):
    """No answer: the connection failed, timed out or was cancelled."""

    def __init__(self, detail: str, timed_out: bool = False, cancelled: bool = False) -> None:
        super().__init__(detail)
        self.timed_out = timed_out
        self.cancelled = cancelled


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class Cancel:
    """Requests made under one cancellation: `cancel()` aborts those in flight and later ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)

    def _enter(self, sock: socket.socket) -> bool:
        with self._lock:
            if not self.cancelled:
                self._sockets.add(sock)
            return not self.cancelled

    def _leave(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


class Connections:
    def __init__(self, idle_per_host: int = 64) -> None:
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._idle_per_host = idle_per_host
        self._closed = False

    def post(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
        cancel: Cancel | None = None,
    ) -> Response:
        method: str = "POST"
        content: bytes | None = body
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(method, url, headers, content, timeout, cancel)
            location = response.headers.get("location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            url = urljoin(url, location)
            if response.status_code in (301, 302, 303):
                method, content = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        raise SendFailed(f"stopped after {MAX_REDIRECTS} redirects")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        cancel: Cancel | None,
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SendFailed(f"unsupported URL {url!r}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        connection = self._take(key, timeout)
        reused = connection.sock is not None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            if connection.sock is None:
                connection.connect()
            sock = connection.sock
            assert sock is not None
            sock.settimeout(timeout)
            if cancel is not None and not cancel._enter(sock):
                raise SendFailed("cancelled by the caller", cancelled=True)
            try:
                connection.request(method, target, body=body, headers=dict(headers))
                answer = connection.getresponse()
                content = answer.read()
            finally:
                if cancel is not None:
                    cancel._leave(sock)
        except SendFailed:
            connection.close()
            raise
        except TimeoutError:
            connection.close()
            raise SendFailed(f"no answer within {timeout}s", timed_out=True) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            connection.close()
            if cancel is not None and cancel.cancelled:
                raise SendFailed("cancelled by the caller", cancelled=True) from None
            if reused and isinstance(e, _CLOSED_WHILE_IDLE):
                # The server closed the idle connection as we sent (its keep-alive ran out):
                # nothing was answered, so send again on a new one, as Go's transport does.
                return self._request(method, url, headers, body, timeout, cancel)
            raise SendFailed(f"{type(e).__name__}: {e}") from None
        if answer.will_close:
            connection.close()
        else:
            self._give(key, connection)
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, content)

    def _take(self, key: tuple[str, str, int], timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                connection = idle.pop()
                if connection.sock is not None and not _closed_by_peer(connection.sock):
                    return connection
                connection.close()
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _give(self, key: tuple[str, str, int], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self._idle_per_host:
                idle.append(connection)
                return
        connection.close()


_CLOSED_WHILE_IDLE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle connection with something to read has been closed (or broken) by the server."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
