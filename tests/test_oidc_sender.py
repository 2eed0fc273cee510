"""The producers present Eventing's OIDC token when they have one (knative/overlays/oidc).

With `authentication-oidc` on, a SinkBinding mounts its subject's token at /oidc/token, and the
Broker answers 401 to a POST without `Authorization: Bearer <token>`. The web and the reconciler
send through imagerec.events.emit; here it posts to a real HTTP server that records headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from local_http import serving

from imagerec import events
from imagerec.events import UPLOADED, emit, new_event


@pytest.fixture
def sink() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(dict(self.headers))
            status = 202 if self.headers.get("Authorization") == "Bearer good-token" else 401
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url + "/imagerec/default", seen


def event():
    data = {"imageId": "i1", "userId": "u1", "albumId": "a1", "blobKey": "u1/a1/i1.jpg"}
    return new_event(UPLOADED, "/web", data, subject="i1")


def test_the_token_eventing_mounts_is_sent_and_reread(
    sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = sink
    token = tmp_path / "token"
    monkeypatch.setenv("IMAGEREC_OIDC_TOKEN_FILE", str(token))
    token.write_text("good-token\n")
    emit(event(), url)
    assert seen[-1]["Authorization"] == "Bearer good-token"
    # Eventing renews the token in place: the next send reads the new one.
    token.write_text("renewed-token")
    with pytest.raises(events.EmitFailed, match="401"):
        emit(event(), url)
    assert seen[-1]["Authorization"] == "Bearer renewed-token"


def test_without_a_token_nothing_is_added(
    sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = sink
    monkeypatch.setenv("IMAGEREC_OIDC_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(events.EmitFailed, match="401"):
        emit(event(), url)
    assert "Authorization" not in seen[-1]
    (tmp_path / "empty").write_text("")
    assert events.oidc_authorization(str(tmp_path / "empty")) == {}


def test_the_default_path_is_where_the_sinkbinding_mounts_it() -> None:
    assert events.OIDC_TOKEN_FILE == "/oidc/token"
