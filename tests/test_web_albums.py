"""Albums: create, list (count + cover), rename, delete with its blobs, escaping, ownership."""

from __future__ import annotations

import pytest
from test_web_app import BUS, DOG, HOSTILE, count, set_done

from imagerec.blobstore import thumbnail_key
from imagerec.models import Album, Detection, Image

pytest_plugins = ["test_web_app"]


def test_create_and_list_albums(ann):
    first = ann.create_album("Holiday")
    second = ann.create_album("  Garden   party ")
    albums = ann.get("/api/albums").json["albums"]
    assert {a["id"]: a["name"] for a in albums} == {first: "Holiday", second: "Garden party"}
    assert all(a["photoCount"] == 0 and a["coverUrl"] is None for a in albums)


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_album_name_is_checked(ann, name):
    response = ann.api("POST", "/api/albums", json={"name": name})
    assert response.status_code == 400 and response.json["error"]


def test_album_body_must_be_json_with_a_name(ann):
    assert ann.api("POST", "/api/albums", json={"title": "x"}).status_code == 400
    assert ann.api("POST", "/api/albums", data="name=x").status_code == 400


def test_album_names_are_unique_per_user(ann, bob):
    ann.create_album("Holiday")
    again = ann.api("POST", "/api/albums", json={"name": "Holiday"})
    assert again.status_code == 409 and "already" in again.json["error"]
    assert bob.create_album("Holiday")


def test_album_list_shows_photo_count_and_cover(backend, ann):
    album_id = ann.create_album()
    dog = ann.upload_one(album_id, DOG)
    ann.upload_one(album_id, BUS)
    key = thumbnail_key(f"{ann.id}/{album_id}/{dog['id']}.jpg")
    backend.blobs().put(key, DOG.read_bytes())
    set_done(backend, dog["id"], thumbnail_key=key)
    [album] = ann.get("/api/albums").json["albums"]
    assert album["photoCount"] == 2
    assert album["coverUrl"] == f"/photos/{dog['id']}/thumbnail"
    page = ann.get("/").text
    assert f'src="/photos/{dog["id"]}/thumbnail"' in page
    assert 'data-count="2"' in page and "2 photos" in page


def test_get_album_with_labels(backend, ann):
    album_id = ann.create_album()
    dog = ann.upload_one(album_id, DOG)
    set_done(backend, dog["id"], [("Dog", 0.9, [0, 0, 1, 1]), ("Dog", 0.4, [0, 0, 0.5, 0.5])])
    body = ann.get(f"/api/albums/{album_id}").json
    assert body["album"]["photoCount"] == 1
    assert body["labels"] == [{"label": "Dog", "count": 1}]


def test_rename_album(ann):
    album_id = ann.create_album("Old")
    response = ann.api("PATCH", f"/api/albums/{album_id}", json={"name": "New"})
    assert response.status_code == 200 and response.json["album"]["name"] == "New"
    ann.form(f"/albums/{album_id}/rename", {"name": "Newer"})
    assert ann.get(f"/api/albums/{album_id}").json["album"]["name"] == "Newer"


def test_rename_to_an_existing_name_is_refused(ann):
    ann.create_album("One")
    two = ann.create_album("Two")
    response = ann.api("PATCH", f"/api/albums/{two}", json={"name": "One"})
    assert response.status_code == 409
    assert ann.get(f"/api/albums/{two}").json["album"]["name"] == "Two"


def test_create_album_with_the_form(ann):
    response = ann.form("/albums", {"name": "From a form"})
    assert response.status_code == 302
    album_id = int(response.headers["Location"].rsplit("/", 1)[1])
    page = ann.get(f"/albums/{album_id}")
    assert page.status_code == 200 and "From a form" in page.text


def test_create_album_form_shows_errors(ann):
    ann.form("/albums", {"name": "Twice"})
    response = ann.form("/albums", {"name": "Twice"}, follow_redirects=True)
    assert "You already have an album called Twice." in response.text


@pytest.mark.parametrize("use_form", [False, True])
def test_delete_album_removes_rows_and_blobs(backend, ann, use_form):
    album_id = ann.create_album()
    keep = ann.create_album("Keep")
    dog = ann.upload_one(album_id, DOG)
    bus = ann.upload_one(album_id, BUS)
    kept = ann.upload_one(keep, DOG)
    blobs = backend.blobs()
    original = f"{ann.id}/{album_id}/{dog['id']}.jpg"
    thumb = thumbnail_key(original)
    blobs.put(thumb, b"thumbnail bytes")
    set_done(backend, dog["id"], [("Dog", 0.9, [0, 0, 1, 1])], thumbnail_key=thumb)
    assert blobs.exists(original)

    if use_form:
        response = ann.form(f"/albums/{album_id}/delete")
        assert response.status_code == 302 and response.headers["Location"] == "/"
    else:
        assert ann.api("DELETE", f"/api/albums/{album_id}").status_code == 204

    assert ann.get(f"/api/albums/{album_id}").status_code == 404
    for key in (original, thumb, f"{ann.id}/{album_id}/{bus['id']}.jpg"):
        assert not blobs.exists(key), key
    assert blobs.exists(f"{ann.id}/{keep}/{kept['id']}.jpg")
    assert count(backend, Album) == 1
    assert count(backend, Image) == 1
    assert count(backend, Detection) == 0


def test_hostile_album_name_is_escaped_everywhere(ann):
    album_id = ann.create_album(HOSTILE)
    image = ann.upload_one(album_id, DOG)
    for url in ("/", f"/albums/{album_id}", f"/photos/{image['id']}"):
        html = ann.get(url).text
        assert HOSTILE not in html, url
        assert "&lt;script&gt;alert(" in html, url
    assert ann.get("/api/albums").json["albums"][0]["name"] == HOSTILE


def test_other_users_albums_are_404_everywhere(ann, bob):
    album_id = ann.create_album("Private")
    ann.upload_one(album_id, DOG)
    assert bob.get("/api/albums").json["albums"] == []
    for method, url, kw in (
        ("GET", f"/api/albums/{album_id}", {}),
        ("PATCH", f"/api/albums/{album_id}", {"json": {"name": "Mine"}}),
        ("DELETE", f"/api/albums/{album_id}", {}),
        ("GET", f"/api/albums/{album_id}/images", {}),
        ("POST", f"/api/albums/{album_id}/images", {"data": {}}),
    ):
        response = bob.api(method, url, **kw)
        assert response.status_code == 404, (method, url)
        assert response.json == {"error": "No such album."}
    for url in (f"/albums/{album_id}/rename", f"/albums/{album_id}/delete"):
        assert bob.form(url, {"name": "Mine"}).status_code == 404
    assert bob.form(f"/albums/{album_id}/photos").status_code == 404
    page = bob.get(f"/albums/{album_id}")
    assert page.status_code == 404 and "Private" not in page.text
    # Foreign and missing look exactly alike.
    assert bob.get("/api/albums/999999").json == bob.get(f"/api/albums/{album_id}").json
    body = ann.get(f"/api/albums/{album_id}").json
    assert body["album"]["name"] == "Private" and body["album"]["photoCount"] == 1


@pytest.mark.parametrize("album_id", [0, 2**31, 10**20])
def test_album_ids_no_row_can_have_are_404(ann, album_id):
    # PostgreSQL's INTEGER would raise on these (an answer of 500) if they reached a query.
    assert ann.get(f"/api/albums/{album_id}").status_code == 404
    assert ann.get(f"/albums/{album_id}").status_code == 404


def test_control_characters_are_dropped_from_album_names(ann):
    album_id = ann.create_album("Holi\x00day\x07")
    assert ann.get(f"/api/albums/{album_id}").json["album"]["name"] == "Holiday"


def test_label_filter_with_control_characters_finds_nothing_and_does_not_fail(ann):
    album_id = ann.create_album()
    response = ann.get(f"/api/albums/{album_id}/images?label=Do%00g")
    assert response.status_code == 200 and response.json["images"] == []
