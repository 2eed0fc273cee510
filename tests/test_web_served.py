"""The web service as deployed: its server (imagerec/serve.py) serving `web:create_app()`,
spoken to over HTTP.

Some things only a real server shows: the server refuses a response header that is not
Latin-1, where Flask's test client lets anything through.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import requests
from conftest import IMAGES
from web_only import WebOnly, start_web_only
from werkzeug.http import parse_options_header

from imagerec.models import Status

DOG = IMAGES / "objects" / "dog.jpg"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebOnly]:
    web = start_web_only(tmp_path_factory.mktemp("served"))
    yield web
    web.stop()


def _signed_in(web: WebOnly, username: str) -> requests.Session:
    http = requests.Session()
    csrf = http.get(f"{web.url}/api/session").json()["csrfToken"]
    response = http.post(
        f"{web.url}/api/users",
        json={"username": username, "password": "correct horse battery"},
        headers={"X-CSRF-Token": csrf},
    )
    assert response.status_code == 201, response.text
    http.headers["X-CSRF-Token"] = response.json()["csrfToken"]
    return http


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("犬の写真.jpg", "photo.jpg"),
        ("Собака.jpg", "photo.jpg"),
        ("dog 🐶.jpg", "dog _.jpg"),
        ("café.jpg", "cafe.jpg"),
        ('say "cheese".jpg', "say _cheese_.jpg"),
    ],
)
def test_a_name_outside_latin_1_is_served_with_rfc_6266_filename(
    web: WebOnly, name: str, fallback: str
) -> None:
    username = f"u{abs(hash(name)) % 10**8}"
    http = _signed_in(web, username)
    assert http.post(f"{web.url}/api/albums", json={"name": "Names"}).status_code == 201
    image_id = web.add_photo(username, "Names", name, Status.DONE, source=DOG)
    for route in ("original", "display"):
        response = http.get(f"{web.url}/photos/{image_id}/{route}")
        assert response.status_code == 200, (route, response.text[:200])
        assert response.content == DOG.read_bytes()
        header = response.headers["Content-Disposition"]
        header.encode("ascii")  # no raw non-ASCII on the wire at all
        disposition, params = parse_options_header(header)
        assert disposition == "inline"
        assert params["filename"] == name  # werkzeug prefers filename*, as browsers do
        assert f'filename="{fallback}"' in header
        encoded = header.split("filename*=UTF-8''", 1)[1]
        assert unquote(encoded, encoding="utf-8") == name


def test_an_ascii_name_needs_no_filename_star(web: WebOnly) -> None:
    http = _signed_in(web, "plain")
    http.post(f"{web.url}/api/albums", json={"name": "Plain"})
    image_id = web.add_photo("plain", "Plain", "dog.jpg", Status.DONE, source=DOG)
    response = http.get(f"{web.url}/photos/{image_id}/original")
    assert response.headers["Content-Disposition"] == 'inline; filename="dog.jpg"'


def test_the_upload_answer_names_the_photo_a_duplicate_is_of(web: WebOnly) -> None:
    http = _signed_in(web, "dupes")
    album = http.post(f"{web.url}/api/albums", json={"name": "Dupes"}).json()["album"]
    url = f"{web.url}/api/albums/{album['id']}/images"
    first = http.post(url, files={"file": ("dog.jpg", DOG.read_bytes())})
    assert first.status_code == 201
    again = http.post(url, files={"file": ("copy of dog.jpg", DOG.read_bytes())})
    assert again.status_code == 409
    body = again.json()
    assert body["images"] == []
    [duplicate] = body["duplicates"]
    assert duplicate["fileName"] == "copy of dog.jpg"
    assert duplicate["duplicateOf"]["id"] == first.json()["images"][0]["id"]
    assert duplicate["message"] == "copy of dog.jpg is already in this album as dog.jpg."
