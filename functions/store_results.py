"""store-results: records a workflow's outcome in the database, the last step of every path.

Consumes dev.imagerec.image.labelled (status done) or dev.imagerec.image.rejected (status
rejected, with its reason) and replies dev.imagerec.image.processed {imageId, status}.
The event must agree with the image's row (owner, album, original, thumbnail key: all derived
from the row, never taken from the event), a done photo's thumbnail must be in the blob store,
and its outcome must be one the photo may still
reach (imagerec.states): a done photo stays done, and a redelivered outcome writes nothing.

    functions-framework --source functions/store_results.py --target store_results
"""

from __future__ import annotations

from typing import Any

import functions_framework
from cloudevents.http import CloudEvent
from sqlalchemy import select
from sqlalchemy.orm import Session

from imagerec.blobstore import BlobNotFound
from imagerec.events import LABELLED, PROCESSED, REJECTED, BadEvent, event_data, new_event
from imagerec.images import (
    check_thumbnail_key,
    duplicate_reason,
    same_photo_in_album,
    stored_image,
)
from imagerec.models import Detection, Image, Status
from imagerec.states import advance
from imagerec.steps import blob_store, cloudevent_step, db_session

SOURCE = "/functions/store-results"
OUTCOMES = {LABELLED: Status.DONE, REJECTED: Status.REJECTED}


@functions_framework.http
@cloudevent_step
def store_results(event: CloudEvent) -> CloudEvent:
    if event["type"] not in OUTCOMES:
        raise BadEvent(f"store-results takes {LABELLED} or {REJECTED}, not {event['type']}")
    data = event_data(event)
    status = OUTCOMES[event["type"]]
    if status == Status.REJECTED:
        # Only the labelled schema defines results; a rejection's extra fields are not read.
        data = _without_results(data)
    with db_session() as session, session.begin():
        # extract-metadata made the row; without it the photo was deleted meanwhile (-> 422).
        image = stored_image(session, data)
        thumbnail = check_thumbnail_key(image, data) if status == Status.DONE else None
        content_hash = (data.get("metadata") or {}).get("contentHash")
        twin = content_hash and same_photo_in_album(
            session, data["albumId"], content_hash, data["imageId"]
        )
        if twin:
            status = Status.REJECTED
            data = {**_without_results(data), "reason": duplicate_reason(twin)}
            thumbnail = None
        if thumbnail is not None and not blob_store().exists(thumbnail):
            # A done photo shows its thumbnail: a forged labelled event cannot make one 404.
            raise BlobNotFound(thumbnail)
        # Duplicate deliveries may run at once: the status moves in one conditional UPDATE,
        # which locks the row, so only the first writes the outcome and the others find it.
        if advance(session, image, status):
            _write_image(image, data, status, thumbnail)
            _replace_detections(session, image, data.get("detections", []))
    processed = {"imageId": data["imageId"], "status": str(status)}
    return new_event(PROCESSED, SOURCE, processed, subject=data["imageId"])


def _write_image(image: Image, data: dict[str, Any], status: Status, thumbnail: str | None) -> None:
    metadata = data.get("metadata") or {}
    geo = metadata.get("geo") or {}
    latitude = geo.get("latitude") or {}
    longitude = geo.get("longitude") or {}
    dimensions = metadata.get("dimensions") or {}
    columns = {
        "reason": data.get("reason") if status == Status.REJECTED else None,
        "thumbnail_key": thumbnail,
        "model": data.get("model"),
        "content_hash": metadata.get("contentHash"),
        "creation_time": metadata.get("creationTime"),
        "lat_degrees": latitude.get("D"),
        "lat_minutes": latitude.get("M"),
        "lat_seconds": latitude.get("S"),
        "lat_direction": latitude.get("Direction"),
        "lon_degrees": longitude.get("D"),
        "lon_minutes": longitude.get("M"),
        "lon_seconds": longitude.get("S"),
        "lon_direction": longitude.get("Direction"),
        "latitude": geo.get("lat"),
        "longitude": geo.get("lon"),
        "exif_make": metadata.get("exifMake"),
        "exif_model": metadata.get("exifModel"),
        "width": dimensions.get("width"),
        "height": dimensions.get("height"),
        "file_size": metadata.get("fileSize"),
        "format": metadata.get("format"),
        "orientation": metadata.get("orientation"),
    }
    # Assigning an equal value is no change to SQLAlchemy: a redelivery issues no UPDATE and
    # leaves updated_at alone.
    for name, value in columns.items():
        setattr(image, name, value)


def _replace_detections(session: Session, image: Image, detections: list[dict]) -> None:
    """Make the image's detection rows exactly `detections`, reusing rows (and their ids)."""
    wanted = sorted(detections, key=lambda d: (-d["score"], d["label"], d["box"]))
    existing = select(Detection).where(Detection.image_id == image.id).order_by(Detection.id)
    rows = list(session.scalars(existing))
    for row in rows[len(wanted) :]:
        session.delete(row)
    for i, detection in enumerate(wanted):
        row = rows[i] if i < len(rows) else None
        if row is None:
            row = Detection(image_id=image.id)
            session.add(row)
        row.label = detection["label"]
        row.score = detection["score"]
        row.box_ymin, row.box_xmin, row.box_ymax, row.box_xmax = detection["box"]


def _without_results(data: dict[str, Any]) -> dict[str, Any]:
    dropped = {"metadata", "thumbnailKey", "detections", "labels", "model"}
    return {key: value for key, value in data.items() if key not in dropped}
