"""Watching an album cheaply: validators (ETag -> 304) computed without reading a photo, the
change feed a page polls while photos are in flight, and the albums list as one query."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from test_web_app import BUS, DOG, set_done

from imagerec.db import get_engine
from imagerec.models import Status
from web import queries

pytest_plugins = ["test_web_app"]

LONG_AGO = datetime.now(UTC) - timedelta(minutes=10)


@contextmanager
def statements(backend) -> Iterator[list[str]]:
    """Every SQL statement the app sends while the block runs."""
    sent: list[str] = []
    engine = get_engine(backend.database_url)

    def record(_conn, _cursor, statement, *_args):
        sent.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def settled_album(backend, ann, n: int = 2) -> tuple[int, list[str]]:
    """An album whose photos are done and were last written long ago."""
    album_id = ann.create_album()
    ids = []
    for i in range(n):
        image = ann.upload_one(album_id, (DOG.read_bytes() + bytes([i]), f"{i}.jpg"))
        set_done(backend, image["id"], [("Dog", 0.9, [0, 0, 1, 1])], updated_at=LONG_AGO)
        ids.append(image["id"])
    return album_id, ids


@pytest.mark.parametrize("path", ["/api/albums/{id}/images?sort=taken&limit=1", "/api/albums/{id}"])
def test_an_unchanged_album_is_304_without_reading_a_photo(backend, ann, path):
    album_id, _ = settled_album(backend, ann)
    url = path.format(id=album_id)
    first = ann.get(url)
    assert first.status_code == 200 and first.headers["ETag"]
    assert first.headers["Cache-Control"] == "private, no-cache"
    with statements(backend) as sent:
        again = ann.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    touching_photos = [s for s in sent if re.search(r"\bFROM (images|detections)\b", s)]
    # One statement, reading the index's newest stamp and whether any photo is in flight:
    # no photo's columns.
    assert len(touching_photos) == 1 and "file_name" not in touching_photos[0], sent
    assert not any("detections" in s for s in sent)


def test_each_listing_has_its_own_validator(backend, ann):
    album_id, _ = settled_album(backend, ann)
    etags = {
        ann.get(f"/api/albums/{album_id}/images?{q}").headers["ETag"]
        for q in ("", "sort=taken", "limit=1", "label=Dog")
    }
    assert len(etags) == 4


def test_any_change_to_the_album_ends_the_304(backend, ann):
    album_id, ids = settled_album(backend, ann, 3)
    url = f"/api/albums/{album_id}/images"

    def etag_still_good() -> bool:
        return ann.get(url, headers={"If-None-Match": etag}).status_code == 304

    etag = ann.get(url).headers["ETag"]
    ann.api("PATCH", f"/api/albums/{album_id}", json={"name": "Renamed"})
    assert not etag_still_good()
    etag = ann.get(url).headers["ETag"]
    # Any write moves the album's last change, whatever its stamp, as long as it is newer.
    set_done(backend, ids[0], status=Status.REJECTED, updated_at=LONG_AGO + timedelta(seconds=1))
    assert not etag_still_good()
    etag = ann.get(url).headers["ETag"]
    assert ann.api("DELETE", f"/api/images/{ids[1]}").status_code == 204
    assert not etag_still_good()
    etag = ann.get(url).headers["ETag"]
    other = ann.create_album("Other")
    moved = ann.api(
        "POST", "/api/images/bulk", json={"action": "move", "ids": [ids[2]], "albumId": other}
    )
    assert moved.json["moved"] == [ids[2]]
    assert not etag_still_good()


def test_no_validator_while_photos_are_in_flight(backend, ann):
    album_id, _ = settled_album(backend, ann)
    ann.upload_one(album_id, BUS)  # waiting
    response = ann.get(f"/api/albums/{album_id}/images")
    assert response.status_code == 200 and "ETag" not in response.headers


def test_no_validator_just_after_a_write(backend, ann):
    """A slower writer may still be committing a row stamped earlier than this one."""
    album_id, ids = settled_album(backend, ann)
    set_done(backend, ids[0], updated_at=datetime.now(UTC))  # stamped now
    response = ann.get(f"/api/albums/{album_id}/images")
    assert response.status_code == 200 and "ETag" not in response.headers


def test_the_albums_list_revalidates(backend, ann):
    settled_album(backend, ann)
    first = ann.get("/api/albums")
    again = ann.get("/api/albums", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    ann.create_album("Another")
    assert (
        ann.get("/api/albums", headers={"If-None-Match": first.headers["ETag"]}).status_code == 200
    )


# --- the change feed -------------------------------------------------------------------------


def test_the_change_feed_sends_only_what_changed(backend, ann):
    album_id, ids = settled_album(backend, ann, 3)
    url = f"/api/albums/{album_id}/changes"
    start = ann.get(url).json
    assert start["images"] == [] and start["since"] and start["reload"] is False
    with statements(backend) as sent:
        quiet = ann.get(f"{url}?since={start['since']}").json
    assert quiet["images"] == [] and "album" not in quiet
    assert not any("detections" in s for s in sent)
    set_done(backend, ids[1], [("Cat", 0.8, [0, 0, 1, 1])], updated_at=datetime.now(UTC))
    changed = ann.get(f"{url}?since={quiet['since']}&sort=taken").json
    assert [i["id"] for i in changed["images"]] == [ids[1]]
    assert changed["images"][0]["display"]["day"] == "Date unknown"
    assert changed["album"]["counts"]["done"] == 3


def test_the_change_feed_reports_a_photo_becoming_retryable(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    url = f"/api/albums/{album_id}/changes"
    since = ann.get(url).json["since"]
    # Waiting for 31 s now: past the 30 s after which a waiting photo may be retried.
    set_done(backend, image["id"], status=Status.UPLOADED,
             updated_at=datetime.now(UTC) - timedelta(seconds=31))  # fmt: skip
    [changed] = ann.get(f"{url}?since={since}").json["images"]
    assert changed["retryable"] is True and changed["actions"]["retry"]


def test_the_change_feed_asks_for_a_reload_when_much_changed(backend, ann, monkeypatch):
    monkeypatch.setattr(queries, "MAX_CHANGES", 2)
    album_id, _ = settled_album(backend, ann, 0)
    url = f"/api/albums/{album_id}/changes"
    since = ann.get(url).json["since"]
    for i in range(3):
        ann.upload_one(album_id, (DOG.read_bytes() + bytes([i]), f"{i}.jpg"))
    body = ann.get(f"{url}?since={since}").json
    assert body["reload"] is True and body["images"] == []


def _token(moment: str) -> str:
    return base64.urlsafe_b64encode(moment.encode()).decode()


@pytest.mark.parametrize(
    "since",
    ["nonsense", "bm90IGEgZGF0ZQ==", _token("0001-01-01T00:00:00+00:00"),
     _token("0001-01-01T00:00:00"), _token("9999-12-31T23:59:59+00:00")],
)  # fmt: skip
def test_a_bad_since_token_is_400(ann, since):
    response = ann.get(f"/api/albums/{ann.create_album()}/changes?since={since}")
    assert response.status_code == 400 and response.json["error"]


def test_the_change_feed_is_the_owners_only(backend, ann, bob):
    album_id, _ = settled_album(backend, ann, 1)
    assert bob.get(f"/api/albums/{album_id}/changes").status_code == 404


# --- the albums list -------------------------------------------------------------------------


def test_the_albums_list_is_one_query_however_many_albums(backend, ann):
    def queries_for_list() -> list[str]:
        with statements(backend) as sent:
            assert ann.get("/api/albums").status_code == 200
        return [s for s in sent if "albums" in s or "images" in s]

    album_id, _ = settled_album(backend, ann, 2)
    one = queries_for_list()
    for n in range(6):
        other = ann.create_album(f"Album {n}")
        ann.upload_one(other, (DOG.read_bytes() + bytes([n]), "x.jpg"))
    many = queries_for_list()
    assert len(one) == len(many) == 1, many
    albums = ann.get("/api/albums").json["albums"]
    assert len(albums) == 7 and albums[-1]["id"] == album_id
    assert albums[-1]["coverUrl"] is None  # the test photos have no thumbnail
