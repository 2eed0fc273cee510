"""What the pages and the JSON API both do to albums and photos, in one place.

Every loader 404s on anything the signed-in user does not own: another user's album and a
missing one look the same, so ids leak nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, url_for
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
)

from imagerec.blobstore import BlobStoreUnavailable, original_key, thumbnail_key
from imagerec.events import UPLOADED, new_event
from imagerec.formats import extension_for
from imagerec.images import same_photo_in_album, uploaded_event_data
from imagerec.models import Album, Detection, Image, Status
from web.broker import sender
from web.db import get_blobs, get_session

log = logging.getLogger("imagerec.web")

MAX_ALBUM_NAME = 100
MAX_ROW_ID = 2**31 - 1  # an INTEGER key; anything larger cannot name a row
# type/subtype of RFC 6838 restricted-name characters, as werkzeug lowercases it (no parameters).
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # as the uploaded event's schema


# --- loading ---------------------------------------------------------------------------------


def get_album(album_id: int) -> Album:
    album = get_session().get(Album, album_id) if 0 < album_id <= MAX_ROW_ID else None
    if album is None or album.user_id != g.user.id:
        raise NotFound("No such album.")
    return album


def get_image(image_id: str) -> Image:
    image = (
        get_session().get(Image, image_id, options=[selectinload(Image.detections)])
        if IMAGE_ID.match(image_id)
        else None
    )
    if image is None or image.user_id != g.user.id:
        raise NotFound("No such photo.")
    return image


def list_albums() -> list[dict[str, Any]]:
    """The user's albums, newest first, each with its photo count and cover thumbnail."""
    db = get_session()
    counts = dict(
        db.execute(
            select(Image.album_id, func.count(Image.id))
            .where(Image.user_id == g.user.id)
            .group_by(Image.album_id)
        ).all()
    )
    albums = db.scalars(
        select(Album).where(Album.user_id == g.user.id).order_by(Album.created_at.desc())
    ).all()
    return [album_json(a, counts.get(a.id, 0)) for a in albums]


def list_images(album: Album | None, label: str | None = None) -> list[Image]:
    """The photos of one album (or of all the user's albums), newest first, maybe by label."""
    query = (
        select(Image)
        .where(Image.user_id == g.user.id)
        .options(selectinload(Image.detections))
        .order_by(Image.created_at.desc(), Image.id)
    )
    if album is not None:
        query = query.where(Image.album_id == album.id)
    label = printable(label or "").strip()[:128]
    if label:
        labelled = select(Detection.image_id).where(func.lower(Detection.label) == label.lower())
        query = query.where(Image.id.in_(labelled))
    return list(get_session().scalars(query))


def labels_in(album: Album | None) -> list[dict[str, Any]]:
    """Each label (in one album, or all) with the number of photos showing it, most first."""
    photos = func.count(func.distinct(Detection.image_id))
    query = (
        select(Detection.label, photos)
        .join(Image, Image.id == Detection.image_id)
        .where(Image.user_id == g.user.id)
        .group_by(Detection.label)
        .order_by(photos.desc(), Detection.label)
    )
    if album is not None:
        query = query.where(Image.album_id == album.id)
    return [{"label": label, "count": n} for label, n in get_session().execute(query).all()]


# --- albums ----------------------------------------------------------------------------------


def check_album_name(name: str) -> str:
    name = " ".join(printable(name).split())
    if not name:
        raise BadRequest("An album needs a name.")
    if len(name) > MAX_ALBUM_NAME:
        raise BadRequest(f"An album name has at most {MAX_ALBUM_NAME} characters.")
    return name


def create_album(name: str) -> Album:
    album = Album(user_id=g.user.id, name=check_album_name(name))
    _commit_unique(album, f"You already have an album called {album.name}.")
    return album


def rename_album(album: Album, name: str) -> Album:
    album.name = check_album_name(name)
    _commit_unique(album, f"You already have an album called {album.name}.")
    return album


def find_or_create_album(name: str) -> Album:
    name = check_album_name(name)
    existing = get_session().scalar(
        select(Album).where(Album.user_id == g.user.id, Album.name == name)
    )
    return existing or create_album(name)


def delete_album(album: Album) -> None:
    """The rows first: a blob left behind by a failed delete is invisible, a row is not."""
    keys = [k for image in album.images for k in _blob_keys(image)]
    db = get_session()
    db.delete(album)
    db.commit()
    _delete_blobs(keys)


def _commit_unique(row: Any, conflict: str) -> None:
    db = get_session()
    db.add(row)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict(conflict) from None


# --- photos ----------------------------------------------------------------------------------


@dataclass
class Duplicate(Exception):
    """These bytes are already in the album as `existing`."""

    file_name: str
    existing: Image

    @property
    def message(self) -> str:
        return f"{self.file_name} is already in this album as {self.existing.file_name}."


def upload(album: Album, file: FileStorage) -> Image:
    """Store one uploaded file and start its workflow; answers only once both are durable."""
    # Shown to the user and offered as a download name; never part of a key.
    file_name = printable(file.filename or "")[-255:] or "unnamed"

    limit = current_app.config["MAX_UPLOAD_BYTES"]
    data = file.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge(
            f"{file_name} is larger than the limit of {megabytes(limit)} per photo."
        )
    if not data:
        raise BadRequest(f"{file_name} is empty (0 bytes).")
    content_hash = hashlib.sha256(data).hexdigest()
    existing = same_photo_in_album(get_session(), album.id, content_hash)
    if existing is not None:
        raise Duplicate(file_name, existing)

    image_id = uuid.uuid4().hex
    key = original_key(g.user.id, album.id, image_id, extension_for(data[:32]))
    try:
        get_blobs().put(key, data)
    except BlobStoreUnavailable as e:
        log.error("upload of %s: %s", image_id, e)
        raise ServiceUnavailable("The photo store is unreachable; try again shortly.") from e
    image = Image(
        id=image_id,
        user_id=g.user.id,
        album_id=album.id,
        blob_key=key,
        file_name=file_name,
        content_type=_claimed_type(file.mimetype),
        size=len(data),
        content_hash=content_hash,
        status=Status.UPLOADED,
    )
    db = get_session()
    db.add(image)
    try:
        db.commit()
    # Any other failure (the database gone mid-commit) keeps the blob: the row may have been
    # committed all the same, and a stray blob costs only space.
    except IntegrityError:
        # The same bytes raced in through another request: that one wins.
        db.rollback()
        get_blobs().delete(key)
        existing = same_photo_in_album(get_session(), album.id, content_hash)
        if existing is None:
            raise
        raise Duplicate(file_name, existing) from None
    start_workflow(image)
    return image


def start_workflow(image: Image) -> bool:
    """Hand the uploaded event to the Broker in the background; False when there is none."""
    event = new_event(UPLOADED, "/web", uploaded_event_data(image), subject=image.id)
    return sender().send(event)


def retry(image: Image) -> Image:
    """Start the workflow again: steps are idempotent, so a second run changes nothing else."""
    if image.status not in (Status.FAILED, Status.UPLOADED) and not _offer_retry(image):
        raise Conflict(
            f"{image.file_name} is {image.status}; only failed, waiting or stuck photos retry."
        )
    image.status = Status.UPLOADED
    image.reason = None
    get_session().commit()
    start_workflow(image)
    return image


def delete_image(image: Image) -> None:
    keys = _blob_keys(image)
    db = get_session()
    db.delete(image)
    db.commit()
    _delete_blobs(keys)


def _blob_keys(image: Image) -> list[str]:
    # The thumbnail key is derived too: the pipeline may write it after this row was read.
    return sorted({image.blob_key, image.thumbnail_key or thumbnail_key(image.blob_key)})


def _delete_blobs(keys: list[str]) -> None:
    blobs = get_blobs()
    for key in keys:
        try:
            blobs.delete(key)
        except (BlobStoreUnavailable, ValueError) as e:
            log.warning("could not delete blob %s: %s", key, e)


def _claimed_type(mimetype: str) -> str | None:
    """The client's content type, kept only to show; None unless it looks like a media type."""
    return mimetype if MEDIA_TYPE.match(mimetype) else None


def printable(text: str) -> str:
    """Without control characters (NUL included, which PostgreSQL text cannot hold)."""
    return "".join(c for c in text if c.isprintable())


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MB" if size >= 1024 * 1024 else f"{size} bytes"


# --- JSON shapes (the API's and the page's) --------------------------------------------------


def album_json(album: Album, photo_count: int) -> dict[str, Any]:
    cover = get_session().scalar(
        select(Image)
        .where(Image.album_id == album.id, Image.thumbnail_key.is_not(None))
        .order_by(Image.created_at.desc())
        .limit(1)
    )
    return {
        "id": album.id,
        "name": album.name,
        "photoCount": photo_count,
        "coverUrl": url_for("photos.thumbnail", image_id=cover.id) if cover else None,
        "createdAt": album.created_at.isoformat(),
        "url": url_for("albums.album", album_id=album.id),
    }


def count_photos(album: Album) -> int:
    return get_session().scalar(select(func.count(Image.id)).where(Image.album_id == album.id))


def image_json(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "albumId": image.album_id,
        "fileName": image.file_name,
        "status": image.status,
        "reason": image.reason,
        "retryable": _offer_retry(image),
        "size": image.size,
        "contentType": image.content_type,
        "contentHash": image.content_hash,
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "orientation": image.orientation,
        "fileSize": image.file_size,
        "takenAt": image.creation_time,
        "camera": {"make": image.exif_make, "model": image.exif_model},
        "gps": gps_json(image),
        "labels": image.labels(),
        "detections": [
            {"label": d.label, "score": d.score, "box": d.box} for d in image.detections
        ],
        "model": image.model,
        "createdAt": image.created_at.isoformat(),
        "updatedAt": image.updated_at.isoformat() if image.updated_at else None,
        "urls": {
            "page": url_for("photos.photo", image_id=image.id),
            "original": url_for("photos.original", image_id=image.id),
            "display": url_for("photos.display", image_id=image.id),
            "thumbnail": url_for("photos.thumbnail", image_id=image.id)
            if image.thumbnail_key
            else None,
        },
    }


def _offer_retry(image: Image) -> bool:
    """Failed photos, and photos the pipeline has not moved on for a while (none spins forever)."""
    if image.status == Status.FAILED:
        return True
    patience = {
        Status.UPLOADED: current_app.config["RETRY_UPLOADED_AFTER_SECONDS"],
        Status.PROCESSING: current_app.config["STUCK_AFTER_SECONDS"],
    }.get(image.status)
    if patience is None or image.updated_at is None:
        return False
    return (datetime.now(UTC) - aware(image.updated_at)).total_seconds() > patience


def aware(moment: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def gps_json(image: Image) -> dict[str, Any] | None:
    if image.latitude is None or image.longitude is None:
        return None

    def dms(degrees, minutes, seconds, direction):
        if degrees is None:
            return None
        return {"D": degrees, "M": minutes, "S": seconds, "Direction": direction}

    return {
        "lat": image.latitude,
        "lon": image.longitude,
        "latitude": dms(
            image.lat_degrees, image.lat_minutes, image.lat_seconds, image.lat_direction
        ),
        "longitude": dms(
            image.lon_degrees, image.lon_minutes, image.lon_seconds, image.lon_direction
        ),
        "mapUrl": map_url(image.latitude, image.longitude),
    }


def map_url(lat: float, lon: float) -> str:
    return (
        f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=15/{lat:.6f}/{lon:.6f}"
    )
