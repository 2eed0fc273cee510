"""Listing photos a page at a time: keyset cursors by date taken or uploaded, both orders,
with the label filter, and the indexes that keep a deep page as cheap as the first."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy
from test_web_app import DOG

from imagerec.db import get_engine
from imagerec.models import Detection, Image, Status
from web import queries

pytest_plugins = ["test_web_app"]

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def add_photos(backend, user_id: int, album_id: int, n: int, *, taken=None) -> list[str]:
    """`n` done photos made through the core, uploaded a minute apart (the last newest);
    `taken(i)` gives photo i's EXIF time (None: unknown)."""
    ids = []
    with backend.session() as db:
        for i in range(n):
            image_id = uuid.uuid4().hex
            db.add(
                Image(
                    id=image_id,
                    user_id=user_id,
                    album_id=album_id,
                    blob_key=f"{user_id}/{album_id}/{image_id}.jpg",
                    file_name=f"IMG_{i:04d}.jpg",
                    size=1000,
                    content_hash=uuid.uuid4().hex,
                    status=Status.DONE,
                    created_at=START + timedelta(minutes=i),
                    creation_time=taken(i) if taken else None,
                    detections=[
                        Detection(label="Dog" if i % 2 else "Cat", score=0.9, box_ymin=0,
                                  box_xmin=0, box_ymax=1, box_xmax=1)
                    ],
                )
            )  # fmt: skip
            ids.append(image_id)
        db.commit()
    return ids


def _taken(i: int) -> str | None:
    # Out of upload order, with ties on the same second and some unknown.
    return None if i % 4 == 3 else f"2019-0{1 + (i * 5) % 7}-01T10:00:00"


def walk(ann, url: str, limit: int) -> list[list[str]]:
    """Every page of `url`, following nextCursor."""
    pages, cursor = [], None
    while True:
        sep = "&" if "?" in url else "?"
        query = f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        body = ann.get(query).json
        pages.append([i["id"] for i in body["images"]])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100


def expected_order(backend, album_id: int, sort: str, order: str) -> list[str]:
    with backend.session() as db:
        rows = db.scalars(sqlalchemy.select(Image).where(Image.album_id == album_id)).all()

    def key(image):
        first = image.creation_time or "" if sort == "taken" else image.created_at.isoformat()
        return (first, image.id)

    return [i.id for i in sorted(rows, key=key, reverse=order == "desc")]  # fmt: skip


@pytest.mark.parametrize("sort", ["uploaded", "taken"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_cover_the_album_once_in_order(backend, ann, sort, order):
    album_id = ann.create_album()
    add_photos(backend, ann.id, album_id, 11, taken=_taken)
    pages = walk(ann, f"/api/albums/{album_id}/images?sort={sort}&order={order}", 4)
    assert [len(p) for p in pages] == [4, 4, 3]
    assert sum(pages, []) == expected_order(backend, album_id, sort, order)


def test_newest_first_by_default_and_unknown_dates_last(backend, ann):
    album_id = ann.create_album()
    ids = add_photos(backend, ann.id, album_id, 4, taken=_taken)
    body = ann.get(f"/api/albums/{album_id}/images").json
    assert [i["id"] for i in body["images"]] == ids[::-1] and body["nextCursor"] is None
    by_taken = ann.get(f"/api/albums/{album_id}/images?sort=taken").json["images"]
    assert by_taken[-1]["id"] == ids[3] and by_taken[-1]["display"]["day"] == "Date unknown"
    assert by_taken[0]["display"]["day"] == "Saturday, 1 June 2019"


def test_a_photo_added_meanwhile_neither_repeats_nor_shifts_the_pages(backend, ann):
    album_id = ann.create_album()
    ids = add_photos(backend, ann.id, album_id, 6)
    first = ann.get(f"/api/albums/{album_id}/images?limit=3").json
    ann.upload_one(album_id, DOG)  # newest: before the first page, not in the second
    second = ann.get(f"/api/albums/{album_id}/images?limit=3&cursor={first['nextCursor']}").json
    assert [i["id"] for i in second["images"]] == ids[2::-1]


def test_label_filter_pages_too(backend, ann):
    album_id = ann.create_album()
    ids = add_photos(backend, ann.id, album_id, 9)
    pages = walk(ann, f"/api/albums/{album_id}/images?label=dog", 2)
    assert sum(pages, []) == [ids[i] for i in (7, 5, 3, 1)]


def test_search_pages_across_albums(backend, ann, bob):
    one, two = ann.create_album("One"), ann.create_album("Two")
    mine = add_photos(backend, ann.id, one, 3) + add_photos(backend, ann.id, two, 3)
    add_photos(backend, bob.id, bob.create_album(), 3)
    pages = walk(ann, "/api/images?label=Dog", 1)
    assert sorted(sum(pages, [])) == sorted(mine[i] for i in (1, 4))
    assert len(sum(walk(ann, "/api/images", 4), [])) == 6


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=501", "limit=x", "sort=size", "order=up", "cursor=nonsense!",
     "cursor=WyJ1cGxvYWRlZCJd"],
)  # fmt: skip
def test_bad_listing_parameters_are_400(ann, query):
    album_id = ann.create_album()
    for url in (f"/api/albums/{album_id}/images?{query}", f"/api/images?{query}"):
        response = ann.get(url)
        assert response.status_code == 400 and response.json["error"], url


def test_a_cursor_is_for_its_own_order(backend, ann):
    album_id = ann.create_album()
    add_photos(backend, ann.id, album_id, 3)
    cursor = ann.get(f"/api/albums/{album_id}/images?limit=1").json["nextCursor"]
    response = ann.get(f"/api/albums/{album_id}/images?sort=taken&cursor={cursor}")
    assert response.status_code == 400 and "another sort order" in response.json["error"]


def test_the_album_page_renders_only_the_first_page(backend, ann):
    album_id = ann.create_album()
    add_photos(backend, ann.id, album_id, queries.DEFAULT_PAGE + 5)
    page = ann.get(f"/albums/{album_id}").text
    # The page carries its first page as data for its script (album.html's #first-page).
    block = re.search(r'<script type="application/json" id="first-page">(.*?)</script>', page, re.S)
    first = json.loads(block.group(1))
    assert len(first["images"]) == queries.DEFAULT_PAGE and first["nextCursor"]
    rest = ann.get(f"/api/albums/{album_id}/images?cursor={first['nextCursor']}").json
    assert len(rest["images"]) == 5 and rest["nextCursor"] is None


@pytest.mark.parametrize("sort", ["uploaded", "taken"])
def test_a_deep_page_is_an_index_range_scan(backend, ann, sort):
    """The database plans the page query on the composite index, not a scan and a sort."""
    album_id = ann.create_album()
    add_photos(backend, ann.id, album_id, 3, taken=_taken)
    with backend.session() as db:
        last = db.scalars(sqlalchemy.select(Image).where(Image.album_id == album_id)).first()
    page = queries.Page(sort=sort, limit=50)
    page = queries.Page(sort=sort, limit=50, cursor=queries.encode_cursor(page, last))
    query = queries.page_query(Image.album_id == album_id, page)
    engine = get_engine(backend.database_url)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    index = f"ix_images_album_id_{'taken' if sort == 'taken' else 'created_at'}"
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
            text = " ".join(str(row[-1]) for row in plan)
            assert f"USING INDEX {index}" in text and "TEMP B-TREE" not in text, text
        else:
            connection.exec_driver_sql("SET enable_seqscan = off")  # 3 rows: it would scan
            plan = connection.exec_driver_sql(f"EXPLAIN {compiled}").scalars().all()
            text = "\n".join(plan)
            assert index in text and "Sort" not in text, text


@pytest.mark.parametrize(
    "query",
    ["limit=²", "limit=٣", "limit=" + "9" * 5000, "limit=+5", "limit= 5",
     "cursor=" + "[" * 1500, "cursor=" + "W" * 5000],
)  # fmt: skip
def test_odd_numbers_and_cursors_are_400_not_500(ann, query):
    album_id = ann.create_album()
    for url in (f"/api/albums/{album_id}/images?{query}", f"/api/images?{query}"):
        response = ann.get(url)
        assert response.status_code == 400 and response.json["error"], url


def test_a_cursor_nested_deep_is_400(ann):
    import base64

    cursor = base64.urlsafe_b64encode(b"[" * 1500).decode()
    response = ann.get(f"/api/images?cursor={cursor}")
    assert response.status_code == 400 and "cursor" in response.json["error"]
