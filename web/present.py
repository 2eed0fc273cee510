"""What the pages and the JSON API show: the album and photo objects, with every display
string made here, once, so the pages' scripts only insert them (web/API.md documents them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for

from imagerec.models import Album, Image, Status
from web.db import aware
from web.queries import can_retry

STATUS_TEXT = {
    Status.UPLOADED: "Waiting…",
    Status.PROCESSING: "Processing…",
    Status.DONE: "Done",
    Status.REJECTED: "Rejected",
    Status.FAILED: "Failed",
}
SORTS = ("taken", "uploaded")
# Part of every validator (ETag) of these shapes: change it whenever a shape changes, so no
# browser keeps an old-shaped answer across a deploy.
SHAPES = "2026-12-03"
UNKNOWN_DAY = "Date unknown"


def album_json(album: Album, counts: dict[str, int], cover_id: str | None) -> dict[str, Any]:
    """`counts` holds the album's photos by state ("processing" includes "uploaded")."""
    counts = {state: counts.get(state, 0) for state in ("done", "processing", "rejected", "failed")}
    photos = counts["done"] + counts["processing"]  # what is or will be a photo in the album
    return {
        "id": album.id,
        "name": album.name,
        "photoCount": photos,
        "counts": counts,
        "coverUrl": url_for("photos.thumbnail", image_id=cover_id) if cover_id else None,
        "createdAt": album.created_at.isoformat(),
        "url": url_for("albums.album", album_id=album.id),
        "display": {
            "photoCount": plural(photos, "photo"),
            "states": ", ".join(
                f"{n} {state}" for state, n in counts.items() if n and state != "done"
            )
            or None,
        },
    }


def image_json(image: Image, sort: str = "uploaded") -> dict[str, Any]:
    """The photo object; `sort` ("taken" or "uploaded") picks the day heading it belongs under."""
    retryable = can_retry(image)
    return {
        "id": image.id,
        "albumId": image.album_id,
        "fileName": image.file_name,
        "status": image.status,
        "reason": image.reason,
        "retryable": retryable,
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
        "model": model_name(image.model),
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
        "display": display_json(image, sort),
        "actions": {
            "delete": url_for("api.delete_image", image_id=image.id),
            "retry": url_for("api.retry_image", image_id=image.id) if retryable else None,
            "move": url_for("api.move_image", image_id=image.id),
        },
    }


def display_json(image: Image, sort: str = "uploaded") -> dict[str, str | None]:
    taken = taken_at(image.creation_time)
    uploaded = aware(image.created_at)
    day_of = taken if sort == "taken" else uploaded
    title = image.file_name
    if taken is not None:
        title += f", taken {short_date(taken)}"
    if image.status != Status.DONE:
        title += f", {STATUS_TEXT.get(image.status, image.status).rstrip('…').lower()}"
    return {
        "status": STATUS_TEXT.get(image.status, image.status),
        "reason": image.reason,
        "takenAt": date_time(taken) if taken else None,
        "uploadedAt": date_time(uploaded) + " UTC",
        "camera": camera(image.exif_make, image.exif_model),
        "dimensions": dimensions(image.width, image.height, image.orientation),
        "orientation": ORIENTATION_TEXT.get(image.orientation or 1),
        "fileSize": file_size(image.file_size or image.size),
        "format": image.format,
        "place": place(image.latitude, image.longitude),
        "day": day_heading(day_of) if day_of else UNKNOWN_DAY,
        "title": title,
    }


def taken_at(creation_time: str | None) -> datetime | None:
    """EXIF's local time of capture (its offset, if any, is kept but not applied)."""
    if not creation_time:
        return None
    try:
        return datetime.fromisoformat(creation_time)
    except ValueError:
        return None


def short_date(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def date_time(moment: datetime) -> str:
    return f"{short_date(moment)}, {moment:%H:%M}"


def day_heading(moment: datetime) -> str:
    return f"{moment:%A}, {moment.day} {moment:%B %Y}"


def camera(make: str | None, model: str | None) -> str | None:
    make, model = (make or "").strip(), (model or "").strip()
    # Many makers repeat their name in the model ("NIKON" + "NIKON D70").
    return (model if model.lower().startswith(make.lower()) else f"{make} {model}").strip() or None


# EXIF Orientation (tag 0x0112) as a viewer can use it: how the camera stored the pixels, as
# the page always shows them turned upright. 1, the usual, says nothing worth a line.
ORIENTATION_TEXT = {
    2: "Stored mirrored; shown as taken",
    3: "Stored upside down; shown upright",
    4: "Stored upside down and mirrored; shown as taken",
    5: "Stored on its side and mirrored; shown as taken",
    6: "Stored on its side; shown upright",
    7: "Stored on its side and mirrored; shown as taken",
    8: "Stored on its side; shown upright",
}


def dimensions(width: int | None, height: int | None, orientation: int | None) -> str | None:
    if not width or not height:
        return None
    # Stored pixels, shown the way up the viewer sees them (orientations 5-8 turn by 90°).
    if (orientation or 1) >= 5:
        width, height = height, width
    return f"{width} × {height}"


def place(lat: float | None, lon: float | None) -> str | None:
    if lat is None or lon is None:
        return None
    return f"{abs(lat):.2f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.2f}° {'E' if lon >= 0 else 'W'}"


def file_size(size: int | None) -> str | None:
    """A byte count as people read it: 512 bytes, 814 KB, 8.1 MB, 30 MB (binary units)."""
    if size is None:
        return None
    if size < 1024:
        return plural(size, "byte")
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    megabytes = size / (1024 * 1024)
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:.0f} MB"


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def model_name(model: str | None) -> str | None:
    """The detector's name without where it lives on the server (a path or a handle URL)."""
    parts = [p for p in (model or "").split("/") if p]
    if not parts:
        return None
    # A handle ends in its version (tfhub.dev/google/openimages_v4/ssd/mobilenet_v2/1).
    if len(parts) > 1 and parts[-1].isdigit():
        return f"{parts[-2]} v{parts[-1]}"
    return parts[-1]


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
