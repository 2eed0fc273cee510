"""The `imagerec upload` client against a live server (werkzeug, in a thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from test_web_app import BUS, DOG, PASSWORD, sign_up
from werkzeug.serving import make_server

from web import client

pytest_plugins = ["test_web_app"]


@pytest.fixture
def server(app) -> Iterator[str]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_upload_creates_the_album_and_reports_progress(app, server):
    account = sign_up(app, "ann")
    seen: list[tuple[str, int, int]] = []
    results = client.upload(
        server, [DOG, BUS], "Trip", "ann", PASSWORD, progress=lambda *p: seen.append(p)
    )
    assert [r.outcome for r in results] == ["uploaded", "uploaded"]
    [album] = account.get("/api/albums").json["albums"]
    assert album["name"] == "Trip" and album["photoCount"] == 2
    for path in (DOG, BUS):
        sent = [s for name, s, _ in seen if name == path.name]
        total = {t for name, _, t in seen if name == path.name}
        assert sent == sorted(sent) and len(sent) > 1
        assert sent[-1] == total.pop() > path.stat().st_size


def test_upload_into_an_existing_album_tells_about_duplicates(app, server):
    account = sign_up(app, "ann")
    album_id = account.create_album("Trip")
    first = account.upload_one(album_id, DOG)
    results = client.upload(server, [DOG, BUS], "Trip", "ann", PASSWORD)
    assert [r.outcome for r in results] == ["duplicate", "uploaded"]
    assert results[0].image["id"] == first["id"]
    assert "already in this album as dog.jpg" in results[0].message
    assert len(account.get("/api/albums").json["albums"]) == 1


def test_wrong_password_raises(app, server):
    sign_up(app, "ann")
    with pytest.raises(client.ClientError, match="Wrong username or password"):
        client.upload(server, [DOG], "Trip", "ann", "not the password")


def test_main_uploads_and_exits_zero(app, server, monkeypatch, capsys):
    sign_up(app, "ann")
    monkeypatch.setenv("IMAGEREC_PASSWORD", PASSWORD)
    code = client.main([str(DOG), "--album", "CLI", "--url", server, "--user", "ann"])
    out = capsys.readouterr()
    assert code == 0
    assert f"{DOG}: uploaded" in out.out
    assert "100%" in out.err


def test_main_reports_errors(app, server, monkeypatch, capsys, tmp_path):
    sign_up(app, "ann")
    monkeypatch.setenv("IMAGEREC_PASSWORD", PASSWORD)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code = client.main([str(empty), "--album", "CLI", "--url", server, "--user", "ann"])
    assert code == 1
    assert "empty (0 bytes)" in capsys.readouterr().out
    monkeypatch.setenv("IMAGEREC_PASSWORD", "wrong password")
    assert client.main([str(DOG), "--album", "CLI", "--url", server, "--user", "ann"]) == 2
