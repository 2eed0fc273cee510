"""The web service alone on its server, for browser tests of the pages themselves: photos are
made through the core in the state a test needs (done, rejected, processing…), so a page test
does not wait minutes for the detector. The whole pipeline is tests/test_browser.py's business.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from imagerec.blobstore import BlobStore, open_blob_store, original_key, thumbnail_key
from imagerec.config import Settings, load_settings
from imagerec.db import session_factory, upgrade
from imagerec.models import Album, Detection, Image, Status, User
from workflows.dev import Child, free_port, server_argv


@dataclass
class WebOnly:
    settings: Settings
    child: Child
    _thumbs: dict[tuple[int, int, int], bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.child.url

    def session(self) -> Session:
        return session_factory(self.settings.database_url)()

    def blobs(self) -> BlobStore:
        return open_blob_store(self.settings.blob_url)

    def stop(self) -> None:
        self.child.signal_stop()
        self.child.wait_stopped()

    def album_id(self, username: str, name: str) -> tuple[int, int]:
        """(user id, album id) of `username`'s album called `name`."""
        with self.session() as session:
            row = session.execute(
                select(User.id, Album.id)
                .join(Album, Album.user_id == User.id)
                .where(User.username == username, Album.name == name)
            ).one()
            return row[0], row[1]

    def add_photo(
        self,
        username: str,
        album: str,
        file_name: str,
        status: Status = Status.DONE,
        *,
        source: Path | None = None,
        colour: tuple[int, int, int] = (90, 140, 200),
        reason: str | None = None,
        taken: str | None = None,
        uploaded: datetime | None = None,
        detections: list[tuple[str, float, list[float]]] = (),
    ) -> str:
        """A photo row (and its original and thumbnail blobs) as the pipeline leaves it."""
        user_id, album_id = self.album_id(username, album)
        data = source.read_bytes() if source else _jpeg(colour, (640, 480))
        image_id = uuid.uuid4().hex
        key = original_key(user_id, album_id, image_id, "jpg")
        blobs = self.blobs()
        blobs.put(key, data)
        thumb = None
        if status == Status.DONE:
            thumb = thumbnail_key(key)
            blobs.put(thumb, _thumbnail(data))
        with self.session() as session:
            image = Image(
                id=image_id,
                user_id=user_id,
                album_id=album_id,
                blob_key=key,
                thumbnail_key=thumb,
                file_name=file_name,
                content_type="image/jpeg",
                size=len(data),
                content_hash=hashlib.sha256(data).hexdigest(),
                status=status,
                reason=reason,
                creation_time=taken,
                format="JPEG" if status != Status.REJECTED else None,
                width=640 if status == Status.DONE else None,
                height=480 if status == Status.DONE else None,
                file_size=len(data),
                created_at=uploaded or datetime.now(UTC),
                model="test" if status == Status.DONE else None,
            )
            image.detections = [
                Detection(
                    label=label,
                    score=score,
                    box_ymin=box[0],
                    box_xmin=box[1],
                    box_ymax=box[2],
                    box_xmax=box[3],
                )
                for label, score, box in detections
            ]
            session.add(image)
            session.commit()
        return image_id

    def add_many(self, username: str, album: str, count: int, label: str | None = None) -> None:
        """`count` done photos in one bulk insert (each showing `label` when given); only the
        newest 200 get thumbnail bytes."""
        user_id, album_id = self.album_id(username, album)
        blobs = self.blobs()
        start = datetime(2025, 1, 1, tzinfo=UTC)
        rows = []
        for n in range(count):
            image_id = uuid.uuid4().hex
            key = original_key(user_id, album_id, image_id, "jpg")
            rows.append(
                {
                    "id": image_id,
                    "user_id": user_id,
                    "album_id": album_id,
                    "blob_key": key,
                    "thumbnail_key": thumbnail_key(key),
                    "file_name": f"IMG_{n:05d}.jpg",
                    "content_type": "image/jpeg",
                    "size": 1000,
                    "content_hash": uuid.uuid4().hex + uuid.uuid4().hex,
                    "status": Status.DONE,
                    "creation_time": (start + timedelta(hours=7 * n)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "format": "JPEG",
                    "width": 640,
                    "height": 480,
                    "file_size": 1000,
                    "created_at": start + timedelta(minutes=n),
                    "updated_at": start + timedelta(minutes=n),
                }
            )
        # Only the first screen's thumbnails need bytes; the rest are fetched as they scroll in.
        for row in rows[-200:]:
            blobs.put(row["thumbnail_key"], self._thumb(len(self._thumbs) % 7))
        with self.session() as session:
            session.execute(insert(Image), rows)
            if label:
                box = {"box_ymin": 0.1, "box_xmin": 0.1, "box_ymax": 0.9, "box_xmax": 0.9}
                found = [{"image_id": r["id"], "label": label, "score": 0.8, **box} for r in rows]
                session.execute(insert(Detection), found)
            session.commit()

    def _thumb(self, n: int) -> bytes:
        colour = ((40 * n) % 255, (90 + 30 * n) % 255, (200 - 20 * n) % 255)
        if colour not in self._thumbs:
            self._thumbs[colour] = _jpeg(colour, (256, 192))
        return self._thumbs[colour]


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    picture = PILImage.new("RGB", size, colour)
    # A lighter band, so a thumbnail is visibly a picture and its orientation shows.
    picture.paste(tuple(min(255, c + 60) for c in colour), (0, size[1] // 2, size[0], size[1]))
    # A comment of its own: no two made photos are the same bytes (the album would refuse them).
    picture.save(out, "JPEG", quality=80, comment=uuid.uuid4().hex.encode())
    return out.getvalue()


def _thumbnail(data: bytes) -> bytes:
    with PILImage.open(io.BytesIO(data)) as picture:
        picture = picture.convert("RGB")
        picture.thumbnail((256, 256))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=80)
        return out.getvalue()


def start_web_only(data_dir: Path, **env: Any) -> WebOnly:
    """The web's server (imagerec/serve.py) serving `web:create_app()` on a free port, its data
    (SQLite, blobs) in data_dir."""
    settings = load_settings({"IMAGEREC_DATA_DIR": str(data_dir), **env})
    upgrade(settings.database_url)
    port = free_port()
    child_env = {
        **os.environ,
        "IMAGEREC_DATA_DIR": str(data_dir),
        "IMAGEREC_DATABASE_URL": settings.database_url,
        "IMAGEREC_BLOB_URL": settings.blob_url,
        "IMAGEREC_SECRET_KEY": uuid.uuid4().hex,
        "PYTHONUNBUFFERED": "1",
        **{k: str(v) for k, v in env.items()},
    }
    child_env.pop("K_SINK", None)  # no broker: uploads stay `uploaded`, as a test wants them
    argv = server_argv("--app", "web:create_app()", "--threads", "8")
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    child = Child("web", argv, child_env, f"http://127.0.0.1:{port}")
    child.start()
    if not child.wait_ready(60):
        child.signal_stop()
        raise RuntimeError("the web service did not start in 60 s")
    return WebOnly(settings, child)
