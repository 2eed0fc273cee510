"""A 10,000-photo album, made through the core, as the web serves it: the first page of the
JSON API, its weight, what watching it costs, and the albums list's queries.

    from benchmarks.album_scale import album_scale_figures   # benchmarks/run.py calls it

Runs the web app in-process (Flask's test client: no HTTP, so the figures are the server's
own) on a throwaway SQLite database, the dev stack's default. Speed figures are ratios
against a baseline measured interleaved in the same run: the cheapest request the app
answers (GET /healthz: routing, headers, the test client), which every request pays anyway.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from benchmarks.figures import Figure
from benchmarks.timing import Cost, interleaved, ratio
from imagerec.db import get_engine, session_factory, upgrade
from imagerec.models import Album, Detection, Image, Status

PASSWORD = "benchmark password"
LABELS = ("Dog", "Cat", "Person", "Car", "Bicycle", "Bird", "Tree")
# Requests of a millisecond or two are timed in batches: one sample of a single call is as
# long as a garbage collection or a cache miss left by the request before it, which decided
# the poll ratios from run to run (1.35x one run, 0.87x another, for the same two queries).
BATCH = 20


def album_scale_figures(smoke: bool = False, photos: int | None = None) -> list[Figure]:
    """The figures, for benchmarks/run.py's report; `smoke` makes a small album, once."""
    count = photos or (300 if smoke else 10_000)
    repeat = 1 if smoke else 40
    with tempfile.TemporaryDirectory(prefix="imagerec-album-scale-") as folder:
        return _measure(Path(folder), count, repeat)


def _measure(folder: Path, count: int, repeat: int) -> list[Figure]:
    from web import create_app

    url = f"sqlite:///{folder / 'imagerec.db'}"
    upgrade(url)
    app = create_app(
        {"TESTING": True, "SECRET_KEY": "bench", "DATABASE_URL": url,
         "BLOB_URL": f"file://{folder / 'blobs'}", "SINK": None}
    )  # fmt: skip
    client = app.test_client()
    csrf = client.get("/api/session").json["csrfToken"]
    user = client.post(
        "/api/users",
        json={"username": "bench", "password": PASSWORD},
        headers={"X-CSRF-Token": csrf},
    ).json["user"]
    album_id = _make_album(url, user["id"], "10,000 photos", count)
    small = [_make_album(url, user["id"], f"Album {n}", 5) for n in range(19)]

    images = f"/api/albums/{album_id}/images"
    first = client.get(images)
    cursor = first.json["nextCursor"]
    for _ in range(min(40, count // 100 - 1)):  # a deep page: the 41st of 100 (or the last)
        cursor = client.get(f"{images}?cursor={cursor}").json["nextCursor"] or cursor
    etag = first.headers["ETag"]
    since = client.get(f"/api/albums/{album_id}/changes").json["since"]
    not_modified = client.get(images, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304, not_modified.status_code
    small_images = f"/api/albums/{small[0]}/images"
    small_etag = client.get(small_images).headers["ETag"]
    html = client.get(f"/albums/{album_id}")

    quick = {
        "floor": lambda: client.get("/healthz"),
        # Signs in and loads the album, nothing else: what any request about it pays.
        "album_floor": lambda: client.get(f"/api/albums/{album_id}/changes"),
        "poll_304": lambda: client.get(images, headers={"If-None-Match": etag}),
        "poll_304_small": lambda: client.get(small_images, headers={"If-None-Match": small_etag}),
        "poll_changes": lambda: client.get(f"/api/albums/{album_id}/changes?since={since}"),
    }
    batch = 1 if repeat == 1 else BATCH
    costs = interleaved(
        {
            **{name: _batched(request, batch) for name, request in quick.items()},
            "first_page": lambda: client.get(images),
            "deep_page": lambda: client.get(f"{images}?cursor={cursor}"),
            "html": lambda: client.get(f"/albums/{album_id}"),
            "albums_list": lambda: client.get("/api/albums"),
        },
        repeat,
    )
    costs.update({name: Cost(costs[name].cpu / batch, costs[name].wall / batch) for name in quick})
    # Ratios use this process's CPU time: steady when other processes load the machine.
    cpu = {name: cost.cpu for name, cost in costs.items()}
    floor, album_floor = cpu["floor"], cpu["album_floor"]
    sql = {
        "albums_list": _statements(url, lambda: client.get("/api/albums")),
        "poll_304": _statements(url, lambda: client.get(images, headers={"If-None-Match": etag})),
    }
    detail: dict[str, Any] = {"photos": count, "cpu_seconds": round(cpu["first_page"], 5)}
    return [
        Figure("album.first_page.seconds", costs["first_page"].wall, "s",
               f"GET the first page (100 photos) of a {count:,}-photo album", ("<=", 0.25),
               detail=detail),
        Figure("album.first_page.vs_floor", ratio(cpu["first_page"], floor), "×",
               "first page vs the cheapest request (GET /healthz)", baseline="GET /healthz"),
        Figure("album.deep_page.vs_first_page",
               ratio(cpu["deep_page"], cpu["first_page"]), "×",
               "page 41 (keyset cursor) vs the first page", ("<=", 1.5),
               baseline="first page"),
        Figure("album.html_first_screen.seconds", costs["html"].wall, "s",
               "the album page's HTML, first page rendered", ("<=", 0.5)),
        Figure("album.first_page.kilobytes", len(first.data) / 1024, "KB",
               "weight of the first page's JSON (100 photos)", ("<=", 250)),
        Figure("album.html.kilobytes", len(html.data) / 1024, "KB",
               "weight of the album page's HTML", ("<=", 400)),
        Figure("album.poll_304.vs_album_floor", ratio(cpu["poll_304"], album_floor), "×",
               "a poll of the unchanged album (If-None-Match -> 304) vs a signed-in request "
               "that only loads the album", None,
               baseline="GET /api/albums/<id>/changes without since",
               detail={"cpu_seconds": round(cpu["poll_304"], 5),
                       "album_floor_cpu_seconds": round(album_floor, 5),
                       "sql_statements": len(sql["poll_304"])}),
        Figure("album.poll_304.vs_small_album",
               ratio(cpu["poll_304"], cpu["poll_304_small"]), "×",
               f"a 304 poll of the {count:,}-photo album vs one of a 5-photo album",
               ("<=", 1.25), baseline="the same poll, 5-photo album"),
        Figure("album.poll_changes.vs_album_floor",
               ratio(cpu["poll_changes"], album_floor), "×",
               "a quiet poll of the change feed vs a signed-in request that only loads the album",
               None, baseline="GET /api/albums/<id>/changes without since",
               detail={"cpu_seconds": round(cpu["poll_changes"], 5)}),
        Figure("album.poll_304.vs_first_page",
               ratio(cpu["poll_304"], cpu["first_page"]), "×",
               "a 304 poll vs sending the first page again", ("<=", 0.2),
               baseline="first page"),
        Figure("albums_list.queries",
               sum("albums" in s for s in sql["albums_list"]), "queries",
               "SQL statements reading albums or photos for the list of 20 albums",
               ("==", 1), detail={"seconds": round(costs["albums_list"].wall, 5)}),
    ]  # fmt: skip


def _batched(request: Callable[[], object], times: int) -> Callable[[], None]:
    def requests() -> None:
        for _ in range(times):
            request()

    return requests


def _make_album(url: str, user_id: int, name: str, count: int) -> int:
    """An album of `count` done photos (a few labels each), in bulk through the core's models."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with session_factory(url)() as session:
        album = Album(user_id=user_id, name=name)
        session.add(album)
        session.flush()
        rows, detections = [], []
        for n in range(count):
            image_id = uuid.uuid4().hex
            key = f"{user_id}/{album.id}/{image_id}.jpg"
            rows.append(
                {"id": image_id, "user_id": user_id, "album_id": album.id, "blob_key": key,
                 "thumbnail_key": key.replace(".jpg", ".thumb.jpg"),
                 "file_name": f"IMG_{n:05d}.jpg", "content_type": "image/jpeg",
                 "size": 2_500_000, "content_hash": uuid.uuid4().hex + uuid.uuid4().hex,
                 "status": Status.DONE, "format": "JPEG", "width": 4032, "height": 3024,
                 "orientation": 1, "file_size": 2_500_000, "exif_make": "Apple",
                 "exif_model": "iPhone 11 Pro Max", "model": "centernet",
                 "creation_time": (start + timedelta(hours=5 * n)).strftime("%Y-%m-%dT%H:%M:%S"),
                 "created_at": long_ago - timedelta(seconds=count - n),
                 "updated_at": long_ago}
            )  # fmt: skip
            for k in range(n % 3 + 1):
                detections.append(
                    {"image_id": image_id, "label": LABELS[(n + k) % len(LABELS)],
                     "score": 0.5 + k / 10, "box_ymin": 0.1, "box_xmin": 0.1,
                     "box_ymax": 0.9, "box_xmax": 0.9}
                )  # fmt: skip
        if rows:
            session.execute(insert(Image), rows)
            session.execute(insert(Detection), detections)
        session.commit()
        return album.id


def _statements(url: str, request) -> list[str]:
    sent: list[str] = []
    engine = get_engine(url)

    def record(_conn, _cursor, statement, *_args):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        request()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [s for s in sent if "albums" in s or "images" in s]


if __name__ == "__main__":
    for figure in album_scale_figures():
        print(f"{figure.key:36} {figure.value:10.4g} {figure.unit:8} {figure.met}  {figure.detail}")
