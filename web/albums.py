"""Pages: the album list, one album's live page, and the forms that change albums."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, Conflict, HTTPException

from web import library
from web.auth import login_required

bp = Blueprint("albums", __name__)

STATUS_TEXT = {
    "uploaded": "Waiting",
    "processing": "Processing",
    "done": "Done",
    "rejected": "Rejected",
    "failed": "Failed",
}
CARD_FIELDS = [
    ("taken", "Taken"),
    ("camera", "Camera"),
    ("dimensions", "Size"),
    ("bytes", "File"),
    ("place", "Place"),
]
DETAIL_FIELDS = [
    *CARD_FIELDS,
    ("format", "Format"),
    ("orientation", "Orientation"),
    ("uploaded", "Uploaded"),
    ("model", "Detector"),
]


def meta_value(image: dict[str, Any], field: str) -> str | None:
    """One metadata field as the page shows it; album.js formats the same way."""
    if field == "taken":
        return image["takenAt"].replace("T", " ") if image["takenAt"] else None
    if field == "camera":
        make, model = image["camera"]["make"] or "", image["camera"]["model"] or ""
        return (model if model.startswith(make) else f"{make} {model}").strip() or None
    if field == "dimensions":
        if not image["width"]:
            return None
        # Stored pixels, shown the way up the viewer sees them (orientations 5-8 turn by 90°).
        turned = (image["orientation"] or 1) >= 5
        width, height = (
            (image["height"], image["width"]) if turned else (image["width"], image["height"])
        )
        return f"{width} × {height}"
    if field == "bytes":
        return human_bytes(image["fileSize"] or image["size"])
    if field == "place":
        gps = image["gps"]
        return f"{gps['lat']:.5f}, {gps['lon']:.5f}" if gps else None
    if field == "orientation":
        return str(image["orientation"]) if image["orientation"] else None
    if field == "uploaded":
        return image["createdAt"][:19].replace("T", " ")
    return image.get(field)


def human_bytes(size: int | None) -> str | None:
    if size is None:
        return None
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


@bp.app_context_processor
def _page_helpers() -> dict[str, Any]:
    return {
        "status_text": lambda status: STATUS_TEXT.get(status, status),
        "meta_fields": CARD_FIELDS,
        "detail_fields": DETAIL_FIELDS,
        "meta_value": meta_value,
    }


@bp.get("/")
@login_required
def index():
    return render_template("albums/index.html", albums=library.list_albums())


@bp.post("/albums")
@login_required
def create():
    try:
        album = library.create_album(request.form.get("name", ""))
    except (BadRequest, Conflict) as e:
        flash(e.description, "error")
        return redirect(url_for("albums.index"))
    return redirect(url_for("albums.album", album_id=album.id))


@bp.get("/albums/<int:album_id>")
@login_required
def album(album_id: int):
    album = library.get_album(album_id)
    labels = library.labels_in(album)
    # Matching is case-insensitive: show the label as the detector spells it (`dog` -> Dog).
    asked = (request.args.get("label") or "").strip()
    label = next((x["label"] for x in labels if x["label"].lower() == asked.lower()), asked)
    images = library.list_images(album, label or None)
    return render_template(
        "albums/album.html",
        album=album,
        images=[library.image_json(i) for i in images],
        labels=labels,
        label=label or None,
        max_upload_bytes=current_app.config["MAX_UPLOAD_BYTES"],
    )


@bp.get("/search")
@login_required
def search():
    """Photos across every album of the user that show a label."""
    label = (request.args.get("label") or "").strip()
    images = library.list_images(None, label) if label else []
    return render_template(
        "albums/search.html",
        label=label,
        images=[library.image_json(i) for i in images],
        labels=library.labels_in(None),
    )


@bp.post("/albums/<int:album_id>/rename")
@login_required
def rename(album_id: int):
    album = library.get_album(album_id)
    try:
        library.rename_album(album, request.form.get("name", ""))
    except (BadRequest, Conflict) as e:
        flash(e.description, "error")
    return redirect(url_for("albums.album", album_id=album.id))


@bp.post("/albums/<int:album_id>/delete")
@login_required
def delete(album_id: int):
    album = library.get_album(album_id)
    name = album.name
    library.delete_album(album)
    flash(f"Deleted the album {name} and its photos.", "info")
    return redirect(url_for("albums.index"))


@bp.post("/albums/<int:album_id>/photos")
@login_required
def upload(album_id: int):
    """The no-JavaScript upload form; the page's script uses the JSON API instead."""
    album = library.get_album(album_id)
    files = [f for f in request.files.getlist("file") if f.filename or f.content_length]
    if not files:
        flash("Choose one or more photos to upload.", "error")
    for file in files:
        try:
            library.upload(album, file)
        except library.Duplicate as e:
            flash(e.message, "error")
        except HTTPException as e:
            flash(e.description, "error")
    return redirect(url_for("albums.album", album_id=album.id))
