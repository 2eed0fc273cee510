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

from imagerec.blobstore import WORKING_COPY_SIDE, has_working_copy, thumbnail_key, working_key
from imagerec.events import ACCEPTED, THUMBNAILED, BadEvent, event_data, new_event
from imagerec.formats import register_heif_opener, sniff_format
from imagerec.images import stored_image
from imagerec.pixels import Undecodable, displayable, load_photo, open_photo, with_small_profile
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
    thumbnail, copy = _renditions(
        original, settings().thumbnail_size, has_working_copy(original_key)
    )
    if copy is not None:  # first: detect-objects looks for it once the thumbnail is announced
        blobs.put(working_key(original_key), copy)
    blobs.put(key, thumbnail)
    return new_event(THUMBNAILED, SOURCE, {**data, "thumbnailKey": key}, subject=data["imageId"])


def _thumbnail(original: bytes, size: int) -> bytes:
    return _renditions(original, size, working_copy=False)[0]


def _renditions(original: bytes, size: int, working_copy: bool) -> tuple[bytes, bytes | None]:
    """The thumbnail, and with `working_copy` an upright JPEG of at most WORKING_COPY_SIDE
    pixels a side (more than half that on a larger photo), both from one decode."""
    # Only an event that skipped extract-metadata gets a refusal here; retrying cannot help.
    kind = sniff_format(original[:32])
    if kind is None:
        raise Refused("the original is not in a supported format")
    try:
        image = open_photo(original, kind, settings())
        if kind == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= size): a 12 MP photo
            # then costs a fraction of the memory and time.
            image.draft("RGB", (size, size))
        load_photo(image)
    except Undecodable as e:
        raise Refused(str(e)) from e
    with image:
        # pillow-heif has already applied a HEIF rotation and reset the EXIF tag to 1, so
        # nothing turns twice.
        ImageOps.exif_transpose(image, in_place=True)
        # Convert before resizing: Pillow resamples 16-bit greyscale wrongly.
        upright = displayable(image)
        # Keep the colour profile (phones shoot Display P3) unless the colour space changed.
        icc_profile = image.info.get("icc_profile") if upright.mode == image.mode else None
        copy = None
        if working_copy:  # shrunk, encoded, then shrunk on to the thumbnail
            # By a whole factor (a box filter, ~10 ms): LANCZOS from 12 MP to 2048 px costs
            # 200 ms of CPU, most of a HEIC decode's cost again.
            factor = -(-max(upright.size) // WORKING_COPY_SIDE)
            upright = upright.reduce(factor) if factor > 1 else upright
            upright, icc_profile = with_small_profile(upright, icc_profile)
            copy = _jpeg(upright, quality=88, icc_profile=icc_profile)
        upright.thumbnail((size, size), Image.Resampling.LANCZOS)
        upright, icc_profile = with_small_profile(upright, icc_profile)
    return _jpeg(upright, quality=85, icc_profile=icc_profile), copy


def _jpeg(image: Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True, icc_profile=icc_profile)
    return out.getvalue()
