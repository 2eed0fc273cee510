"""What changes albums and photos: create, rename, delete, upload, retry and move.

Each action takes rows already loaded (and so already checked to be the user's) by
web/queries.py. Rows are written before blobs are deleted, and blobs before rows are made:
a stray blob costs only space, a row without its blob is a broken photo.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, Conflict, NotFound, RequestEntityTooLarge

from imagerec import states
from imagerec.blobstore import (
    BlobNotFound,
    BlobStoreUnavailable,
    album_prefix,
    has_working_copy,
    original_key,
    photo_keys,
    thumbnail_key,
    working_key,
)
from imagerec.events import UPLOADED, new_event
from imagerec.formats import extension_for
from imagerec.images import same_photo_in_album, uploaded_event_data
from imagerec.models import Album, Image, Status
from web.broker import sender
from web.db import get_blobs, get_session
from web.errors import Duplicate, photo_store_error
from web.present import STATUS_TEXT, file_size
from web.queries import printable, retry_patience

log = logging.getLogger("imagerec.web")

MAX_ALBUM_NAME = 100
# type/subtype of RFC 6838 restricted-name characters, as werkzeug lowercases it (no parameters).
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


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


def delete_album(album: Album) -> None:
    """The album, its photos (the database cascades) and then every blob under its prefix:
    also those of photos that arrived while it was being deleted, whose rows the cascade took
    without this request ever loading them."""
    prefix = album_prefix(album.user_id, album.id)
    db = get_session()
    db.delete(album)
    db.commit()
    try:
        get_blobs().delete_under(prefix)
    except BlobStoreUnavailable as e:  # the orphan sweep (imagerec reconcile) takes them later
        log.warning("could not delete the blobs under %s: %s", prefix, e)


def _commit_unique(row: Any, conflict: str) -> None:
    db = get_session()
    db.add(row)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict(conflict) from None


# --- photos ----------------------------------------------------------------------------------


def upload(album: Album, file: FileStorage) -> Image:
    """Store one uploaded file and start its workflow; answers only once both are durable."""
    # Shown to the user and offered as a download name; never part of a key.
    file_name = printable(file.filename or "")[-255:] or "unnamed"

    limit = current_app.config["MAX_UPLOAD_BYTES"]
    data = file.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge(
            f"{file_name} is larger than the limit of {file_size(limit)} per photo."
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
        raise photo_store_error(e) from e
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
        _commit_keeping(db, image)
    # Any other failure (the database gone mid-commit) keeps the blob: the row may have been
    # committed all the same, and a stray blob costs only space.
    except IntegrityError:
        # The same bytes raced in through another request (that one wins), or the album was
        # deleted meanwhile (its row is gone: the foreign key refused ours).
        db.rollback()
        get_blobs().delete(key)
        if db.scalar(select(Album.id).where(Album.id == image.album_id)) is None:
            message = f"The album was deleted during the upload; {file_name} was not kept."
            raise NotFound(message) from None
        existing = same_photo_in_album(db, image.album_id, content_hash)
        if existing is None:
            raise
        raise Duplicate(file_name, existing) from None
    start_workflow(image)
    return image


def _commit_keeping(db: Session, image: Image) -> None:
    """Commit without expiring `image`: once the row is committed the upload has happened,
    and describing it must not reload it (a database lost just after the commit would turn
    a stored photo into a 503, and the user's retry into a 409)."""
    db.flush()
    db.refresh(image)  # every column as stored, while the transaction is still open
    set_committed_value(image, "detections", [])  # a new photo has none yet
    db.expire_on_commit = False
    try:
        db.commit()
    finally:
        db.expire_on_commit = True


def start_workflow(image: Image) -> bool:
    """Hand the uploaded event to the Broker in the background; False when there is none."""
    event = new_event(UPLOADED, "/web", uploaded_event_data(image), subject=image.id)
    return sender().send(event)


def retry(image: Image) -> Image:
    """Start the workflow again: steps are idempotent, so a second run changes nothing else.

    Only a failed photo, or one whose work is lost (imagerec.states), and at most once at a
    time: the move back to `uploaded` is one conditional UPDATE that stamps the row, pinned to
    the album and key the photo was loaded with, so the event names the row as committed.
    """
    name = image.file_name
    db = get_session()
    if states.retry(db, image, retry_patience().lost_before(datetime.now(UTC))):
        db.commit()
        start_workflow(image)
        return image
    db.rollback()
    current = db.get(Image, image.id)
    if current is None:
        raise NotFound(f"{name} was deleted meanwhile.")
    if current.status in (Status.UPLOADED, Status.PROCESSING):
        raise Conflict(
            f"{name} is {STATUS_TEXT[current.status].rstrip('…').lower()} already; "
            "it can be retried if it stays so for a while."
        )
    if current.status == Status.FAILED:  # moved meanwhile
        raise Conflict(f"{name} changed meanwhile; reload and try again.")
    raise Conflict(f"{name} is {current.status}; only failed, waiting or stuck photos retry.")


def delete_image(image: Image) -> None:
    keys = _blob_keys(image)
    db = get_session()
    db.delete(image)
    _count_removal(image.album_id)
    db.commit()
    _delete_blobs(keys)


def _count_removal(album_id: int) -> None:
    """A photo leaves the album: the one change no remaining photo's updated_at shows."""
    get_session().execute(
        update(Album).where(Album.id == album_id).values(removals=Album.removals + 1)
    )


def _blob_keys(image: Image) -> list[str]:
    return photo_keys(image.blob_key)


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


def move_image(image: Image, album: Album) -> Image:
    """Into another of the user's albums; its blobs move too, since their keys name the album.

    Only photos the pipeline is not working on: its events name the album they started in.
    """
    if image.album_id == album.id:
        return image
    if image.status in (Status.UPLOADED, Status.PROCESSING):
        raise Conflict(
            f"{image.file_name} is {STATUS_TEXT[image.status].rstrip('…').lower()}; "
            "move it once it is done."
        )
    db = get_session()
    if image.content_hash is not None:
        existing = same_photo_in_album(db, album.id, image.content_hash)
        if existing is not None:
            raise Duplicate(image.file_name, existing)
    blobs = get_blobs()
    old_keys = _blob_keys(image)
    extension = image.blob_key.rsplit(".", 1)[-1]
    new_key = original_key(g.user.id, album.id, image.id, extension)
    new_thumbnail = thumbnail_key(new_key) if image.thumbnail_key else None
    try:
        blobs.put(new_key, blobs.get(image.blob_key))
        if image.thumbnail_key and new_thumbnail:
            blobs.put(new_thumbnail, blobs.get(thumbnail_key(image.blob_key)))
        if has_working_copy(image.blob_key) and blobs.exists(working_key(image.blob_key)):
            blobs.put(working_key(new_key), blobs.get(working_key(image.blob_key)))
    except BlobNotFound:
        raise Conflict(f"{image.file_name}'s file is gone; delete it instead.") from None
    except BlobStoreUnavailable as e:
        raise photo_store_error(e) from e
    name, content_hash = image.file_name, image.content_hash
    new_keys = photo_keys(new_key)
    _count_removal(image.album_id)
    try:
        # Conditional: a retry that slipped in since the photo was loaded (or another move)
        # wins, and this one changes nothing.
        moved = states.move(
            db, image, album_id=album.id, blob_key=new_key, thumbnail_key=new_thumbnail
        )
        if moved:
            db.commit()
    except IntegrityError:  # the same bytes reached that album meanwhile
        db.rollback()
        _delete_blobs(new_keys)
        existing = same_photo_in_album(db, album.id, content_hash or "")
        if existing is None:
            raise
        raise Duplicate(name, existing) from None
    if not moved:
        db.rollback()
        _delete_blobs(new_keys)
        raise Conflict(f"{name} changed meanwhile (it is being processed again); try later.")
    _delete_blobs(old_keys)
    return image
