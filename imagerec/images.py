"""Image rows: registering an upload, matching later events to it, describing it as an event."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from imagerec.blobstore import BlobNotFound, BlobStore, thumbnail_key
from imagerec.models import Album, Image, Status, User

_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,10}$")


class UnknownOwner(LookupError):
    """The user or album named by an event does not exist (or do not belong together)."""


class EventDisagrees(UnknownOwner):
    """The event says something else than the image's row: stale, or forged. The row wins."""


def register_upload(session: Session, data: dict[str, Any], blobs: BlobStore) -> Image:
    """The image row for an uploaded event, made if absent (outside emitters make no row).

    Refuses, and stores nothing, when the user, the album or the blob does not exist.
    """
    image = session.get(Image, data["imageId"])
    if image is not None:
        _check_same_upload(image, data)
        return image
    # The key names its owner, so an event cannot claim another user's original as its own.
    owned = f"{data['userId']}/{data['albumId']}/{data['imageId']}."
    if not (data["blobKey"].startswith(owned) and _EXTENSION.match(data["blobKey"][len(owned) :])):
        raise UnknownOwner(
            f"blob key {data['blobKey']!r} is not <userId>/<albumId>/<imageId>.<ext> of this event"
        )
    if session.get(User, data["userId"]) is None:
        raise UnknownOwner(f"no user {data['userId']}")
    album = session.get(Album, data["albumId"])
    if album is None or album.user_id != data["userId"]:
        raise UnknownOwner(f"no album {data['albumId']} for user {data['userId']}")
    try:
        stored = blobs.size(data["blobKey"])
    except BlobNotFound:
        raise UnknownOwner(f"no blob under key {data['blobKey']!r}") from None
    if stored != data["size"]:
        raise EventDisagrees(
            f"the event says {data['size']} bytes; the blob under {data['blobKey']!r} "
            f"holds {stored}"
        )
    image = Image(
        id=data["imageId"],
        user_id=data["userId"],
        album_id=data["albumId"],
        blob_key=data["blobKey"],
        file_name=data["fileName"],
        content_type=data.get("contentType"),
        size=data["size"],
        status=Status.UPLOADED,
    )
    session.add(image)
    session.flush()
    return image


def stored_image(session: Session, data: dict[str, Any]) -> Image:
    """The image row a later step's event is about: it must exist (a deleted photo is not
    brought back by a late event) and match the event's owner and original."""
    image = session.get(Image, data["imageId"])
    if image is None:
        raise UnknownOwner(f"no image {data['imageId']}: never uploaded, or deleted since")
    _check_same_upload(image, data)
    return image


def _check_same_upload(image: Image, data: dict[str, Any]) -> None:
    if image.user_id != data["userId"] or image.album_id != data["albumId"]:
        raise EventDisagrees(f"image {data['imageId']} belongs to another user or album")
    if image.blob_key != data["blobKey"]:
        raise EventDisagrees(f"image {data['imageId']} is stored under another blob key")
    stored = uploaded_event_data(image)
    for field in ("fileName", "contentType", "size"):
        if data.get(field) != stored[field]:
            raise EventDisagrees(f"image {data['imageId']} was uploaded with another {field}")


def check_thumbnail_key(image: Image, data: dict[str, Any]) -> str:
    """The image's thumbnail key, derived from its original's; an event naming another is
    refused (a forged one could point a thumbnail at someone else's original)."""
    key = thumbnail_key(image.blob_key)
    if data.get("thumbnailKey", key) != key:
        raise EventDisagrees(f"image {image.id} has its thumbnail under {key!r}, not another key")
    return key


def same_photo_in_album(
    session: Session, album_id: int, content_hash: str, other_than: str | None = None
) -> Image | None:
    """An image of the album with these bytes (but `other_than`): a photo is kept once."""
    query = select(Image).where(Image.album_id == album_id, Image.content_hash == content_hash)
    if other_than is not None:
        query = query.where(Image.id != other_than)
    return session.scalars(query).first()


def duplicate_reason(twin: Image) -> str:
    return f"This photo is already in the album as {twin.file_name}."


def uploaded_event_data(image: Image) -> dict[str, Any]:
    """The data of the dev.imagerec.image.uploaded event that starts this image's workflow."""
    return {
        "imageId": image.id,
        "userId": image.user_id,
        "albumId": image.album_id,
        "blobKey": image.blob_key,
        "fileName": image.file_name,
        "contentType": image.content_type,
        "size": image.size,
    }
