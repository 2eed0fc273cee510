"""The display strings and action URLs the server sends with every photo and album, so the
pages' scripts only insert them; and moving photos between albums."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from test_web_app import BUS, DOG, set_done

from imagerec.blobstore import thumbnail_key
from imagerec.models import Image, Status
from web.present import camera, day_heading, dimensions, file_size, model_name, place

pytest_plugins = ["test_web_app"]


def test_a_finished_photo_carries_its_display_strings(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    set_done(
        backend,
        image["id"],
        creation_time="2019-11-09T14:02:11",
        exif_make="Apple",
        exif_model="iPhone 11 Pro Max",
        width=3313,
        height=2566,
        orientation=6,
        file_size=833_284,
        format="HEIF",
        latitude=39.0513,
        longitude=-94.2887,
        model="/srv/models/centernet-coco-tfhub-style",
    )
    body = ann.get(f"/api/images/{image['id']}").json["image"]
    display = body["display"]
    assert display["status"] == "Done" and display["reason"] is None
    assert display["takenAt"] == "9 Nov 2019, 14:02"
    assert display["uploadedAt"].endswith(" UTC")
    assert display["camera"] == "Apple iPhone 11 Pro Max"
    assert display["dimensions"] == "2566 × 3313"  # orientation 6: seen turned
    assert display["orientation"] == "Stored on its side; shown upright"
    assert display["fileSize"] == "814 KB"
    assert display["format"] == "HEIF"
    assert display["place"] == "39.05° N, 94.29° W"
    assert display["title"] == "dog.jpg, taken 9 Nov 2019"
    uploaded = datetime.fromisoformat(body["createdAt"])
    assert display["day"] == day_heading(uploaded)  # sorted by upload: the upload's day
    assert body["model"] == "centernet-coco-tfhub-style"
    taken = ann.get(f"/api/albums/{album_id}/images?sort=taken").json["images"][0]
    assert taken["display"]["day"] == "Saturday, 9 November 2019"
    page = ann.get(f"/photos/{image['id']}").text
    assert "/srv/models" not in page
    assert re.search(r'data-field="orientation".*?Stored on its side; shown upright', page, re.S)


def test_a_photo_without_metadata_says_so(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, BUS)
    set_done(backend, image["id"], status=Status.REJECTED, reason="Not a supported image.")
    [body] = ann.get(f"/api/albums/{album_id}/images?sort=taken").json["images"]
    display = body["display"]
    assert display["status"] == "Rejected" and display["reason"] == "Not a supported image."
    assert display["takenAt"] is None and display["camera"] is None and display["place"] is None
    assert display["day"] == "Date unknown"
    assert display["title"] == "bus.jpg, rejected"
    assert display["fileSize"] == file_size(BUS.stat().st_size)


def test_actions_are_urls_the_script_calls(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    assert image["display"]["status"] == "Waiting…"
    assert image["actions"] == {
        "delete": f"/api/images/{image['id']}",
        "retry": None,
        "move": f"/api/images/{image['id']}",
    }
    set_done(backend, image["id"], status=Status.FAILED, reason="kept failing")
    body = ann.get(f"/api/images/{image['id']}").json["image"]
    assert body["actions"]["retry"] == f"/api/images/{image['id']}/retry"
    assert ann.api("POST", body["actions"]["retry"]).status_code == 202
    assert ann.api("DELETE", body["actions"]["delete"]).status_code == 204


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 bytes"), (1, "1 byte"), (1023, "1,023 bytes"), (833_284, "814 KB"),
     (8_500_000, "8.1 MB"), (30 * 1024 * 1024, "30 MB")],
)  # fmt: skip
def test_one_byte_formatter(size, text):
    assert file_size(size) == text


def test_display_helpers():
    assert camera("NIKON", "NIKON D70") == "NIKON D70"
    assert camera("Canon", "PowerShot") == "Canon PowerShot"
    assert camera(None, None) is None
    assert dimensions(4000, 3000, 1) == "4000 × 3000" and dimensions(None, 3, 1) is None
    assert place(-33.8688, 151.2093) == "33.87° S, 151.21° E"
    assert model_name("https://tfhub.dev/google/openimages_v4/ssd/mobilenet_v2/1") == (
        "mobilenet_v2 v1"
    )
    assert model_name(None) is None


def test_album_counts_mean_what_they_say(backend, ann):
    album_id = ann.create_album()
    states = [Status.DONE, Status.DONE, Status.PROCESSING, Status.REJECTED, Status.FAILED]
    for n, status in enumerate(states):
        image = ann.upload_one(album_id, (DOG.read_bytes() + bytes([n]), f"{n}.jpg"))
        set_done(backend, image["id"], status=status)
    ann.upload_one(album_id, BUS)  # waiting: counts as processing
    [album] = ann.get("/api/albums").json["albums"]
    assert album["photoCount"] == 4
    assert album["counts"] == {"done": 2, "processing": 2, "rejected": 1, "failed": 1}
    assert album["display"] == {
        "photoCount": "4 photos",
        "states": "2 processing, 1 rejected, 1 failed",
    }
    assert ann.get(f"/api/albums/{album_id}").json["album"] == album
    assert "4 photos" in ann.get("/").text


# --- moving ----------------------------------------------------------------------------------


def test_move_a_photo_to_another_album(backend, ann):
    source, target = ann.create_album("From"), ann.create_album("To")
    image = ann.upload_one(source, DOG)
    old_thumbnail = thumbnail_key(f"{ann.id}/{source}/{image['id']}.jpg")
    backend.blobs().put(old_thumbnail, b"thumb")
    set_done(backend, image["id"], thumbnail_key=old_thumbnail)
    response = ann.api("PATCH", image["actions"]["move"], json={"albumId": target})
    assert response.status_code == 200, response.json
    assert response.json["image"]["albumId"] == target
    with backend.session() as db:
        row = db.get(Image, image["id"])
        assert row.album_id == target and row.blob_key.startswith(f"{ann.id}/{target}/")
        assert row.thumbnail_key == thumbnail_key(row.blob_key)
    blobs = backend.blobs()
    assert blobs.get(row.blob_key) == DOG.read_bytes() and blobs.get(row.thumbnail_key) == b"thumb"
    assert not blobs.exists(f"{ann.id}/{source}/{image['id']}.jpg")
    assert not blobs.exists(old_thumbnail)
    assert ann.get(f"/photos/{image['id']}/original").data == DOG.read_bytes()
    assert [i["id"] for i in ann.get(f"/api/albums/{target}/images").json["images"]] == [
        image["id"]
    ]
    assert ann.get(f"/api/albums/{source}/images").json["images"] == []


def test_move_into_someone_elses_album_is_404(backend, ann, bob):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"])
    theirs = bob.create_album()
    response = ann.api("PATCH", f"/api/images/{image['id']}", json={"albumId": theirs})
    assert response.status_code == 404 and response.json["error"] == "No such album."
    mine = ann.create_album("Mine")
    response = bob.api("PATCH", f"/api/images/{image['id']}", json={"albumId": theirs})
    assert response.status_code == 404
    assert ann.get(f"/api/images/{image['id']}").json["image"]["albumId"] != mine


@pytest.mark.parametrize("body", [{}, {"albumId": "2"}, {"albumId": True}, {"albumId": 2**40}])
def test_move_needs_an_album_id(backend, ann, body):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"])
    response = ann.api("PATCH", f"/api/images/{image['id']}", json=body)
    assert response.status_code in (400, 404) and response.json["error"]


def test_moving_a_duplicate_is_409_and_keeps_both(backend, ann):
    first, second = ann.create_album("A"), ann.create_album("B")
    here = ann.upload_one(first, DOG)
    there = ann.upload_one(second, DOG)
    set_done(backend, here["id"])
    response = ann.api("PATCH", f"/api/images/{here['id']}", json={"albumId": second})
    assert response.status_code == 409
    assert response.json["error"] == "dog.jpg is already in this album as dog.jpg."
    assert response.json["duplicateOf"]["id"] == there["id"]
    assert ann.get(f"/photos/{here['id']}/original").data == DOG.read_bytes()


def test_a_photo_in_flight_does_not_move(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    response = ann.api(
        "PATCH", f"/api/images/{image['id']}", json={"albumId": ann.create_album("B")}
    )
    assert response.status_code == 409 and "once it is done" in response.json["error"]


# --- bulk ------------------------------------------------------------------------------------


def _photos(backend, ann, album_id: int, n: int) -> list[str]:
    ids = []
    for i in range(n):
        image = ann.upload_one(album_id, (DOG.read_bytes() + bytes([i]), f"{i}.jpg"))
        set_done(backend, image["id"])
        ids.append(image["id"])
    return ids


def test_bulk_delete(backend, ann, bob):
    album_id = ann.create_album()
    ids = _photos(backend, ann, album_id, 3)
    theirs = bob.upload_one(bob.create_album(), DOG)
    body = {"action": "delete", "ids": [ids[0], ids[2], theirs["id"], "nope"]}
    response = ann.api("POST", "/api/images/bulk", json=body)
    assert response.status_code == 200
    assert response.json["deleted"] == [ids[0], ids[2]]
    assert response.json["errors"] == [
        {"id": theirs["id"], "error": "No such photo.", "status": 404},
        {"id": "nope", "error": "No such photo.", "status": 404},
    ]
    left = ann.get(f"/api/albums/{album_id}/images").json["images"]
    assert [i["id"] for i in left] == [ids[1]]
    assert bob.get(f"/api/images/{theirs['id']}").status_code == 200


def test_bulk_move_with_a_duplicate(backend, ann):
    source, target = ann.create_album("A"), ann.create_album("B")
    ids = _photos(backend, ann, source, 2)
    twin = ann.upload_one(target, (DOG.read_bytes() + bytes([1]), "twin.jpg"))
    body = {"action": "move", "ids": ids, "albumId": target}
    response = ann.api("POST", "/api/images/bulk", json=body)
    assert response.status_code == 200
    assert response.json["moved"] == [ids[0]]
    assert response.json["errors"] == [
        {"id": ids[1], "error": "1.jpg is already in this album as twin.jpg.", "status": 409}
    ]
    in_target = {i["id"] for i in ann.get(f"/api/albums/{target}/images").json["images"]}
    assert in_target == {ids[0], twin["id"]}


def test_bulk_move_into_someone_elses_album_is_404(backend, ann, bob):
    ids = _photos(backend, ann, ann.create_album(), 1)
    body = {"action": "move", "ids": ids, "albumId": bob.create_album()}
    assert ann.api("POST", "/api/images/bulk", json=body).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"action": "copy", "ids": []},
        {"action": "delete", "ids": "abc"},
        {"action": "delete", "ids": [1, 2]},
        {"action": "delete", "ids": ["a"] * 501},
        {"action": "move", "ids": ["a"]},
    ],
)
def test_bulk_refuses_a_bad_body(ann, body):
    response = ann.api("POST", "/api/images/bulk", json=body)
    assert response.status_code == 400 and response.json["error"]


def test_bulk_needs_the_csrf_token(backend, ann):
    ids = _photos(backend, ann, ann.create_album(), 1)
    response = ann.client.post("/api/images/bulk", json={"action": "delete", "ids": ids})
    assert response.status_code == 403
    assert ann.get(f"/api/images/{ids[0]}").status_code == 200
