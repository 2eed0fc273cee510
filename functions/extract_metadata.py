"""extract-metadata: is the upload a supported, intact image, and what does its EXIF say?

Consumes dev.imagerec.image.uploaded; replies dev.imagerec.image.accepted (the upload's data +
`metadata`) or dev.imagerec.image.rejected (+ a one-sentence `reason`). A bad file is an
answer, never an error: only a malformed event (400), an unknown user, album or blob (422) or
an unreachable store (503) is answered otherwise (imagerec.steps).

    functions-framework --source functions/extract_metadata.py --target extract_metadata
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent
from PIL import Image

from imagerec import models
from imagerec.events import ACCEPTED, REJECTED, UPLOADED, BadEvent, event_data, new_event
from imagerec.exif import exif_block, exifread_tags
from imagerec.formats import register_heif_opener, sniff_format
from imagerec.images import duplicate_reason, register_upload, same_photo_in_album
from imagerec.pixels import Undecodable, load_photo, open_photo
from imagerec.states import FINAL, advance
from imagerec.steps import blob_store, cloudevent_step, db_session, settings

SOURCE = "/functions/extract-metadata"
log = logging.getLogger("imagerec.extract_metadata")

register_heif_opener()  # at start-up, not on the first photo
# Pillow's EXIF reader complains about every odd tag; in uploads that is normal, handled below.
warnings.filterwarnings("ignore", category=UserWarning, module="PIL.TiffImagePlugin")

_UPLOAD_INSTEAD = "please upload a JPEG, PNG, WebP or HEIC photo instead"
# Formats people try to upload, by signature, so a refusal can say what the file is.
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
)
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")


class _Unacceptable(Exception):
    """The file is not a supported, intact image (or is already in the album); says why."""


@functions_framework.http
@cloudevent_step
def extract_metadata(event: CloudEvent) -> CloudEvent:
    if event["type"] != UPLOADED:
        raise BadEvent(f"extract-metadata takes {UPLOADED}, not {event['type']}")
    data = event_data(event)
    blobs = blob_store()
    with db_session() as session:
        # An outside emitter's upload has no row yet; unknown user, album or blob -> 422.
        image = register_upload(session, data, blobs)
        # A redelivery leaves a finished photo finished (and the rest of its run then changes
        # nothing); a failed one is started again only by a retry (imagerec.states).
        if image.status not in FINAL:
            advance(session, image, models.Status.PROCESSING)
        session.commit()
    original = blobs.get(data["blobKey"])
    try:
        metadata = _metadata(original)
        _refuse_duplicate(data, metadata["contentHash"])
    except _Unacceptable as e:
        log.info("image %s rejected: %s", data["imageId"], e)
        return new_event(REJECTED, SOURCE, {**data, "reason": str(e)}, subject=data["imageId"])
    return new_event(ACCEPTED, SOURCE, {**data, "metadata": metadata}, subject=data["imageId"])


def _metadata(original: bytes) -> dict[str, Any]:
    kind, image, (width, height) = _decode(original)
    with image:
        # Measured by load_photo: within imagerec.exif's budget.
        block = exif_block(image.info)
        # Libraries disagree on broken EXIF: per field, the first that reads it sensibly wins.
        sources = (_pillow_tags(image), _exifread_tags(block))
        size = {"width": width, "height": height}
    return {
        "creationTime": _first(_creation_time, sources, "datetime", "offset"),
        "geo": _first(_geo, sources, "lat", "lat_ref", "lon", "lon_ref"),
        "exifMake": _first(_text, sources, "make"),
        "exifModel": _first(_text, sources, "model"),
        "dimensions": size,
        # Pillow's value only: it describes the pixels Pillow decodes (pillow-heif has already
        # applied a HEIF rotation and reset the tag), which is what make-thumbnail transposes.
        "orientation": _orientation(sources[0].get("orientation")),
        "fileSize": len(original),
        "format": kind,
        "contentHash": hashlib.sha256(original).hexdigest(),
    }


def _decode(original: bytes) -> tuple[str, Image.Image, tuple[int, int]]:
    """The format (by content), the decoded image and its stored size, or _Unacceptable
    saying why not. A JPEG is decoded at 1/8 scale: libjpeg still reads and checks every
    byte of the compressed data (a cut-off file fails alike), but skips most of the work."""
    if not original:
        raise _Unacceptable("The file is empty (zero bytes).")
    limit = settings().max_upload_bytes
    if len(original) > limit:
        raise _Unacceptable(f"The file is larger than the {limit / 2**20:g} MB limit.")
    kind = sniff_format(original[:32])
    if kind is None:
        raise _Unacceptable(_unsupported(original))
    try:
        # The header's size is checked before a single pixel is decoded.
        image = open_photo(original, kind, settings())
        size = image.size
        if kind == "JPEG":
            image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        load_photo(image)
    except Undecodable as e:
        raise _Unacceptable(str(e)) from None
    return kind, image, size


def _unsupported(original: bytes) -> str:
    head = original[:1024]
    for signature, name in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return f"{name} images are not supported: {_UPLOAD_INSTEAD}."
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return f"AVIF images are not supported: {_UPLOAD_INSTEAD}."
    text = head.decode("utf-8", errors="replace")
    # A multi-byte character cut at the sample's end is one replacement at most.
    if "\x00" not in text and text.count("\ufffd") <= 1:
        if "<svg" in text.lower():
            return f"The file is an SVG drawing, not a photo: {_UPLOAD_INSTEAD}."
        return f"The file is text, not an image: {_UPLOAD_INSTEAD}."
    return f"The file is not an image in a supported format: {_UPLOAD_INSTEAD}."


def _refuse_duplicate(data: dict[str, Any], content_hash: str) -> None:
    with db_session() as session:
        twin = same_photo_in_album(session, data["albumId"], content_hash, data["imageId"])
        if twin is not None:
            raise _Unacceptable(duplicate_reason(twin))


# --- EXIF: raw values by name from each library, then parsed and checked field by field.


def _pillow_tags(image: Image.Image) -> dict[str, Any]:
    try:
        exif = image.getexif()
        photo = exif.get_ifd(0x8769)
        gps = exif.get_ifd(0x8825)
    except Exception:  # malformed EXIF never rejects a good image
        log.debug("Pillow could not read the EXIF", exc_info=True)
        return {}
    return {
        "make": exif.get(0x010F),
        "model": exif.get(0x0110),
        "orientation": exif.get(0x0112),
        "datetime": photo.get(0x9003),
        "offset": photo.get(0x9011),
        "lat_ref": gps.get(1),
        "lat": gps.get(2),
        "lon_ref": gps.get(3),
        "lon": gps.get(4),
    }


_EXIFREAD_NAMES = {
    "make": "Image Make",
    "model": "Image Model",
    "datetime": "EXIF DateTimeOriginal",
    "offset": "EXIF OffsetTimeOriginal",
    "lat_ref": "GPS GPSLatitudeRef",
    "lat": "GPS GPSLatitude",
    "lon_ref": "GPS GPSLongitudeRef",
    "lon": "GPS GPSLongitude",
}


def _exifread_tags(block: bytes | None) -> dict[str, Any]:
    tags = exifread_tags(block) if block else {}
    return {name: tags[key].values for name, key in _EXIFREAD_NAMES.items() if key in tags}


def _first(parse: Callable[..., Any], sources: tuple[dict[str, Any], ...], *names: str) -> Any:
    """The first source's value that `parse` makes sense of (None or an error: it does not)."""
    for tags in sources:
        try:
            value = parse(*(tags.get(name) for name in names))
        except Exception:  # untrusted bytes: whatever a field holds, it never rejects the photo
            value = None
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    """A printable, stripped string (cut at the first NUL, as C writers mean it), or None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = "".join(c for c in value.split("\x00", 1)[0] if c.isprintable()).strip()
    return value[:255] or None


def _creation_time(value: Any, offset: Any) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" as ISO 8601 local time, with the EXIF offset if any."""
    text = _text(value)
    if text is None:
        return None
    when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    offset = _text(offset)
    return when + offset if offset and _OFFSET.match(offset) else when


def _orientation(value: Any) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _geo(lat: Any, lat_ref: Any, lon: Any, lon_ref: Any) -> dict[str, Any] | None:
    latitude = _angle(lat, lat_ref, "NS", 90)
    longitude = _angle(lon, lon_ref, "EW", 180)
    if latitude is None or longitude is None:
        return None
    # Phones write 0/0 when they had no fix; nobody photographs that spot in the Atlantic.
    if latitude[1] == 0 and longitude[1] == 0:
        return None
    return {
        "latitude": latitude[0],
        "longitude": longitude[0],
        "lat": latitude[1],
        "lon": longitude[1],
    }


def _angle(
    value: Any, ref: Any, directions: str, limit: float
) -> tuple[dict[str, Any], float] | None:
    """EXIF degrees/minutes/seconds rationals + reference -> normalised D/M/S and signed degrees."""
    direction = _text(ref)
    if direction is None or direction[:1].upper() not in directions:
        return None
    direction = direction[:1].upper()
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    degrees, minutes, seconds = (float(part) for part in value)
    if not all(math.isfinite(p) and p >= 0 for p in (degrees, minutes, seconds)):
        return None
    if minutes >= 60 or seconds >= 60:
        return None
    # Writers store fractional minutes or seconds; normalise as exiftool does (whole D and M).
    total = round(degrees * 3600 + minutes * 60 + seconds, 4)
    if total > limit * 3600:
        return None
    whole_degrees, rest = divmod(total, 3600)
    whole_minutes, rest_seconds = divmod(rest, 60)
    sign = -1 if direction in "SW" else 1
    dms = {
        "D": int(whole_degrees),
        "M": int(whole_minutes),
        "S": round(rest_seconds, 4),
        "Direction": direction,
    }
    return dms, round(sign * total / 3600, 8)
