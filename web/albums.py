"""Pages: the album list, one album's live page, and the forms that change albums."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, Conflict, HTTPException, RequestEntityTooLarge

from web import actions, queries
from web.auth import login_required
from web.bodies import uploaded_files
from web.errors import Duplicate
from web.present import SORTS, album_json, file_size, image_json

bp = Blueprint("albums", __name__)

# The photo page's details, in order: (field, title).
DETAIL_FIELDS = [
    ("taken", "Taken"),
    ("camera", "Camera"),
    ("dimensions", "Size"),
    ("bytes", "File"),
    ("place", "Place"),
    ("format", "Format"),
    ("orientation", "Orientation"),
    ("uploaded", "Uploaded"),
    ("model", "Detector"),
]
# The pages' field names -> the photo object's display strings (web/present.py makes them).
_DISPLAY_KEYS = {
    "taken": "takenAt",
    "bytes": "fileSize",
    "uploaded": "uploadedAt",
}


def meta_value(image: dict[str, Any], field: str) -> str | None:
    if field == "model":
        return str(image[field]) if image[field] else None
    return image["display"].get(_DISPLAY_KEYS.get(field, field))


@bp.app_context_processor
def _page_helpers() -> dict[str, Any]:
    return {"detail_fields": DETAIL_FIELDS, "meta_value": meta_value}


@bp.get("/")
@login_required
def index():
    albums = [album_json(*row) for row in queries.list_albums()]
    return render_template("albums/index.html", albums=albums)


@bp.post("/albums")
@login_required
def create():
    try:
        album = actions.create_album(request.form.get("name", ""))
    except (BadRequest, Conflict) as e:
        flash(e.description, "error")
        return redirect(url_for("albums.index"))
    return redirect(url_for("albums.album", album_id=album.id))


@bp.get("/albums/<int:album_id>")
@login_required
def album(album_id: int):
    album = queries.get_album(album_id)
    labels = queries.labels_in(album)
    # Matching is case-insensitive: show the label as the detector spells it (`dog` -> Dog).
    asked = (request.args.get("label") or "").strip()
    label = next((x["label"] for x in labels if x["label"].lower() == asked.lower()), asked)
    # The first page only: the page's script fetches the rest as it scrolls (nextCursor).
    sort = request.args.get("sort") if request.args.get("sort") in SORTS else "uploaded"
    images, next_cursor = queries.list_images(album, queries.Page(sort=sort, label=label or None))
    return render_template(
        "albums/album.html",
        album=album,
        images=[image_json(i, sort) for i in images],
        sort=sort,
        next_cursor=next_cursor,
        labels=labels,
        label=label or None,
        max_upload_bytes=current_app.config["MAX_UPLOAD_BYTES"],
        # The limit as the pages say it ("30 MB"), from the one byte formatter.
        upload_limit=file_size(current_app.config["MAX_UPLOAD_BYTES"]),
    )


@bp.get("/search")
@login_required
def search():
    """Photos across every album of the user that show a label."""
    label = (request.args.get("label") or "").strip()
    images, next_cursor = (
        queries.list_images(None, queries.Page(label=label)) if label else ([], None)
    )
    return render_template(
        "albums/search.html",
        label=label,
        images=[image_json(i) for i in images],
        next_cursor=next_cursor,
        labels=queries.labels_in(None),
    )


@bp.post("/albums/<int:album_id>/rename")
@login_required
def rename(album_id: int):
    album = queries.get_album(album_id)
    try:
        actions.rename_album(album, request.form.get("name", ""))
    except (BadRequest, Conflict) as e:
        flash(e.description, "error")
    return redirect(url_for("albums.album", album_id=album.id))


@bp.post("/albums/<int:album_id>/delete")
@login_required
def delete(album_id: int):
    album = queries.get_album(album_id)
    name = album.name
    actions.delete_album(album)
    flash(f"Deleted the album {name} and its photos.", "info")
    return redirect(url_for("albums.index"))


@bp.post("/albums/<int:album_id>/photos")
@login_required
def upload(album_id: int):
    """The no-JavaScript upload form; the page's script uses the JSON API instead."""
    album = queries.get_album(album_id)
    try:
        files = uploaded_files()
    except RequestEntityTooLarge as e:
        flash(e.description, "error")
        return redirect(url_for("albums.album", album_id=album.id))
    if not files:
        flash("Choose one or more photos to upload.", "error")
    for file in files:
        try:
            actions.upload(album, file)
        except Duplicate as e:
            flash(e.message, "error")
        except HTTPException as e:
            flash(e.description, "error")
    return redirect(url_for("albums.album", album_id=album.id))
