"""The server of the web and the steps (imagerec/serve.py), started as `imagerec dev` starts
them, against slow clients: a few dozen of them must not keep anyone else from an answer."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imagerec import serve
from workflows.dev import free_port, server_argv

ROOT = Path(__file__).resolve().parents[1]
SLOW_CLIENTS = 60


@contextlib.contextmanager
def serving(options: list[str], env: dict[str, str], probe: str) -> Iterator[str]:
    port = free_port()
    argv = server_argv(*options, "--host", "127.0.0.1", "--port", str(port))
    process = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url + probe, timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("serve-web")
    env = {"IMAGEREC_DATA_DIR": str(data), "IMAGEREC_SECRET_KEY": "test-key", "K_SERVICE": "web"}
    with serving(["--app", "web:create_app()", "--threads", "8"], env, "/healthz") as url:
        yield url


@pytest.fixture(scope="module")
def step(tmp_path_factory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("serve-step")
    env = {"IMAGEREC_DATA_DIR": str(data), "THREADS": "4", "K_SERVICE": "record-failure"}
    options = ["--source", "functions/record_failure.py", "--target", "record_failure"]
    with serving(options, env, "/") as url:
        yield url


@contextlib.contextmanager
def slow_clients(url: str, count: int = SLOW_CLIENTS) -> Iterator[list[socket.socket]]:
    """`count` connections each sending the start of a request's headers, and no more."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(s)
        yield sockets
    finally:
        for s in sockets:
            s.close()


def trickle(sockets: list[socket.socket]) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.send(b"a")


def _answers_beside_slow_clients(url: str, path: str) -> None:
    with slow_clients(url) as sockets:
        for _ in range(3):
            trickle(sockets)
            started = time.monotonic()
            answer = requests.get(url + path, timeout=5)
            assert answer.status_code in (200, 401), answer.text
            assert time.monotonic() - started < 5


def test_the_web_answers_while_dozens_of_clients_trickle_headers(web):
    _answers_beside_slow_clients(web, "/api/albums")


def test_a_step_answers_while_dozens_of_clients_trickle_headers(step):
    _answers_beside_slow_clients(step, "/")


def test_headers_trickled_past_the_deadline_are_cut_off(step):
    with slow_clients(step, count=3) as sockets:
        deadline = time.monotonic() + serve.HEADER_SECONDS + 10  # "not minutes"
        closed: set[int] = set()
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            time.sleep(1)
            for i, s in enumerate(sockets):
                try:
                    s.send(b"a")  # a byte a second: never idle, never done
                    s.settimeout(0.01)
                    if s.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except OSError:
                    closed.add(i)
        assert len(closed) == len(sockets)


def test_a_stalled_body_is_cut_off_when_idle(step):
    host, port = step.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=serve.IDLE_SECONDS + 10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < serve.IDLE_SECONDS + 5
