"""make-thumbnail: a small upright JPEG of an accepted image, beside its original.

Consumes dev.imagerec.image.accepted; replies dev.imagerec.image.thumbnailed (the accepted
data + `thumbnailKey`). The thumbnail fits in a `thumbnail_size` square, keeps the aspect
ratio and has the EXIF/HEIF orientation applied, so it carries no orientation of its own.
The same original always gives the same key and the same bytes (redelivery is harmless).

    functions-framework --source functions/make_thumbnail.py --target make_thumbnail
"""

from __future__ import annotations

import io
import logging

import functions_framework
from cloudevents.http import CloudEvent
from PIL import Image, ImageOps

from imagerec.blobstore import thumbnail_key
from imagerec.events import ACCEPTED, THUMBNAILED, BadEvent, event_data, new_event
from imagerec.formats import register_heif_opener
from imagerec.images import stored_image
from imagerec.pixels import displayable
from imagerec.steps import Refused, blob_store, cloudevent_step, db_session, settings

SOURCE = "/functions/make-thumbnail"
log = logging.getLogger("imagerec.make_thumbnail")

register_heif_opener()


@functions_framework.http
@cloudevent_step
def make_thumbnail(event: CloudEvent) -> CloudEvent:
    if event["type"] != ACCEPTED:
        raise BadEvent(f"make-thumbnail takes {ACCEPTED}, not {event['type']}")
    data = event_data(event)
    # The row says whose original this is and so where its thumbnail goes: an event that
    # disagrees with it (another user's blob key) is refused before anything is read.
    with db_session() as session:
        original_key = stored_image(session, data).blob_key
    blobs = blob_store()
    original = blobs.get(original_key)  # gone -> BlobNotFound -> 422
    key = thumbnail_key(original_key)
    blobs.put(key, _thumbnail(original, settings().thumbnail_size))
    return new_event(THUMBNAILED, SOURCE, {**data, "thumbnailKey": key}, subject=data["imageId"])


def _thumbnail(original: bytes, size: int) -> bytes:
    try:
        image = Image.open(io.BytesIO(original))
    except Exception as e:
        # Only an event that skipped extract-metadata gets here; retrying cannot help.
        raise Refused(f"the original is not an image Pillow can open: {type(e).__name__}") from e
    with image:
        if image.width * image.height > settings().max_image_pixels:
            raise Refused(f"the original has too many pixels ({image.width}×{image.height})")
        if image.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= size): a 12 MP photo
            # then costs a fraction of the memory and time.
            image.draft("RGB", (size, size))
        try:
            image.load()
        except Exception as e:
            raise Refused(f"the original cannot be decoded: {type(e).__name__}") from e
        # pillow-heif has already applied a HEIF rotation and reset the EXIF tag to 1, so
        # nothing turns twice.
        ImageOps.exif_transpose(image, in_place=True)
        # Convert before resizing: Pillow resamples 16-bit greyscale wrongly.
        thumbnail = displayable(image)
        thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
        # Keep the colour profile (phones shoot Display P3) unless the colour space changed.
        icc_profile = image.info.get("icc_profile") if thumbnail.mode == image.mode else None
        out = io.BytesIO()
        thumbnail.save(out, "JPEG", quality=85, optimize=True, icc_profile=icc_profile)
    return out.getvalue()
