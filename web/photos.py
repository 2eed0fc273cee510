"""Pages and bytes of one photo: its view, delete, retry, and the original and thumbnail.

A served blob's type comes from its content (the stored format, else sniffed), never from
the client; what is not a supported image is only ever offered as a download.
"""

from __future__ import annotations

import io
import logging
import unicodedata
from urllib.parse import quote

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import Conflict, NotFound

from imagerec.blobstore import (
    WORKING_COPY_SIDE,
    BlobNotFound,
    BlobStoreUnavailable,
    has_working_copy,
    thumbnail_key,
    working_key,
)
from imagerec.formats import FORMATS, register_heif_opener, sniff_format
from imagerec.models import Status
from web import actions, queries
from web.auth import login_required
from web.db import get_blobs
from web.errors import photo_store_error
from web.present import image_json

bp = Blueprint("photos", __name__, url_prefix="/photos")
log = logging.getLogger("imagerec.web")

DISPLAY_SIDE = WORKING_COPY_SIDE


@bp.get("/<image_id>")
@login_required
def photo(image_id: str):
    image = queries.get_image(image_id)
    return render_template("photos/photo.html", image=image_json(image), album=image.album)


@bp.post("/<image_id>/delete")
@login_required
def delete(image_id: str):
    image = queries.get_image(image_id)
    album_id, name = image.album_id, image.file_name
    actions.delete_image(image)
    flash(f"Deleted {name}.", "info")
    return _back_to_album(album_id)


@bp.post("/<image_id>/retry")
@login_required
def retry(image_id: str):
    image = queries.get_image(image_id)
    try:
        actions.retry(image)
    except Conflict as e:
        flash(e.description, "error")
    return _back_to_album(image.album_id)


def _back_to_album(album_id: int):
    """The album page, still filtered by the label it was filtered by (the form says which)."""
    label = request.form.get("label") or None
    return redirect(url_for("albums.album", album_id=album_id, label=label))


@bp.get("/<image_id>/original")
@login_required
def original(image_id: str):
    image = queries.get_image(image_id)
    data = _read(image.blob_key)
    if image.status == Status.REJECTED:
        return _download(data, image.file_name)
    return _blob_response(data, image.format or sniff_format(data[:32]), image.file_name)


@bp.get("/<image_id>/thumbnail")
@login_required
def thumbnail(image_id: str):
    image = queries.get_image(image_id)
    if not image.thumbnail_key:
        raise NotFound("This photo has no thumbnail yet.")
    # The key is derived from the original's: a stored one is never believed (an event once
    # could set it to another user's original).
    data = _read(thumbnail_key(image.blob_key))
    return _blob_response(data, sniff_format(data[:32]), "thumbnail.jpg")


@bp.get("/<image_id>/display")
@login_required
def display(image_id: str):
    """The original as a browser can show it: as stored, or HEIF converted to JPEG."""
    image = queries.get_image(image_id)
    data = _read(image.blob_key)
    if image.status == Status.REJECTED:
        return _download(data, image.file_name)
    kind = sniff_format(data[:32])
    if kind and FORMATS[kind].browsers_show:
        return _blob_response(data, kind, image.file_name)
    if kind == "HEIF" and image.status != "rejected":
        copy = _working_copy(image.blob_key)  # make-thumbnail's: no HEIC decode per view
        if copy is not None:
            return _blob_response(copy, "JPEG", image.file_name)
        try:
            jpeg = _heif_as_jpeg(data, current_app.config["MAX_IMAGE_PIXELS"])
            return _blob_response(jpeg, "JPEG", image.file_name)
        except Exception as e:  # a broken HEIF is the pipeline's to reject, not ours to 500
            log.info("cannot convert %s for display: %s", image.id, e)
    raise NotFound("This photo cannot be shown in a browser.")


def _working_copy(key: str) -> bytes | None:
    if not has_working_copy(key):
        return None
    try:
        return get_blobs().get(working_key(key))
    except (BlobNotFound, BlobStoreUnavailable):
        return None


def _read(key: str) -> bytes:
    try:
        return get_blobs().get(key)
    except BlobNotFound:
        raise NotFound("This photo's file is gone.") from None
    except BlobStoreUnavailable as e:
        raise photo_store_error(e) from e


def _download(data: bytes, file_name: str) -> Response:
    """A rejected file (broken, a bomb, not what it claims): its owner may save it, but no
    browser renders it, whatever its first bytes look like (nosniff is set for every answer)."""
    return _blob_response(data, None, file_name)


def _blob_response(data: bytes, kind: str | None, file_name: str) -> Response:
    known = FORMATS.get(kind or "")
    response = Response(data, mimetype=known.mime_type if known else "application/octet-stream")
    response.headers["Content-Disposition"] = content_disposition(
        "inline" if known else "attachment", file_name
    )
    response.headers["Cache-Control"] = "private, max-age=300"
    # Images never need to run anything, even when opened on their own.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def content_disposition(disposition: str, file_name: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients, and the real name as `filename*`.

    HTTP header values are Latin-1 at most (gunicorn refuses anything else), so a name in
    Japanese, Cyrillic or with an emoji travels percent-encoded as UTF-8 (RFC 8187).
    """
    name = "".join(c for c in file_name if c.isprintable()) or "photo"
    fallback = _ascii_name(name)
    header = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"
    return header


# RFC 8187 attr-char, less the percent sign: everything else is percent-encoded.
_ATTR_CHARS = "!#$&+-.^_`|~"


def _ascii_name(name: str) -> str:
    """The name with accents dropped and any other character outside printable ASCII (or a
    quote or backslash, which would end the quoted string) as "_"; "photo" if nothing is left."""
    chars = "".join(_ascii_char(c) for c in name)
    stem, dot, extension = chars.rpartition(".")
    if not dot:
        stem, extension = chars, ""
    if not any(c.isalnum() for c in stem):
        stem = "photo"
    return f"{stem}{dot}{extension}"


def _ascii_char(c: str) -> str:
    plain = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode()
    return "".join(p if " " <= p <= "~" and p not in '"\\' else "_" for p in plain) or "_"


def _heif_as_jpeg(data: bytes, max_pixels: int) -> bytes:
    from PIL import Image as PILImage
    from PIL import ImageOps

    register_heif_opener()
    with PILImage.open(io.BytesIO(data)) as picture:
        # The pipeline may not have judged it yet: refuse bombs before decoding.
        if picture.width * picture.height > max_pixels:
            raise ValueError(f"{picture.width}x{picture.height} is too large to show")
        upright = ImageOps.exif_transpose(picture).convert("RGB")
    upright.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    out = io.BytesIO()
    upright.save(out, "JPEG", quality=88)
    return out.getvalue()
