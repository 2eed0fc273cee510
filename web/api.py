"""The JSON API (documented in web/API.md): what the album page's script and the CLI use.

Errors are {"error": "<one sentence>"} with the matching status (web/errors.py); another
user's resources answer 404 exactly like missing ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from imagerec.models import Album
from web import actions, auth, queries
from web.auth import login_required
from web.bodies import json_object, uploaded_files
from web.errors import Duplicate
from web.present import SHAPES, SORTS, album_json, image_json

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BULK = 500
# Earlier than any `since` this service hands out.
SINCE_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"The field {field!r} is required and must be a string.")
    try:
        value.encode()
    except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\\ud800"): not text
        raise BadRequest(f"The field {field!r} is not valid Unicode text.") from None
    return value


def _album_id(body: dict[str, Any]) -> int:
    value = body.get("albumId")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("The field 'albumId' is required and must be an album's id (a number).")
    return value


def _page() -> queries.Page:
    """The listing parameters: sort, order, limit, cursor and label (web/API.md)."""
    args = request.args
    sort, order = args.get("sort", "uploaded"), args.get("order", "desc")
    if sort not in SORTS:
        raise BadRequest(f"sort is one of {', '.join(SORTS)}.")
    if order not in ("desc", "asc"):
        raise BadRequest("order is desc or asc.")
    limit = query_number("limit", queries.DEFAULT_PAGE, 1, queries.MAX_PAGE)
    return queries.Page(sort, order, limit, args.get("cursor") or None, args.get("label"))


def query_number(name: str, default: int, low: int, high: int) -> int:
    """The query parameter `name` as a whole number from `low` to `high`, or 400.

    ASCII digits only: str.isdigit() and int() also take "²" or "٣", which no client means.
    """
    text = request.args.get(name)
    if text is None:
        return default
    if not (0 < len(text) <= len(str(high)) and text.isascii() and text.isdigit()):
        raise BadRequest(f"{name} is a whole number from {low} to {high}.")
    if not low <= int(text) <= high:
        raise BadRequest(f"{name} is a whole number from {low} to {high}.")
    return int(text)


def _images_json(album, page: queries.Page) -> dict[str, Any]:
    images, next_cursor = queries.list_images(album, page)
    return {"images": [image_json(i, page.sort) for i in images], "nextCursor": next_cursor}


def _user_json() -> dict[str, Any] | None:
    return None if g.user is None else {"id": g.user.id, "username": g.user.username}


def _album_json(album) -> dict[str, Any]:
    return album_json(album, queries.album_counts(album), queries.cover_of(album))


# --- session and users -----------------------------------------------------------------------


@bp.get("/session")
def get_session_state():
    """Who is signed in, and the CSRF token every state-changing call must send."""
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}


@bp.post("/session")
def sign_in():
    body = json_object()
    g.user = auth.sign_in(_text(body, "username"), _text(body, "password"))
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}


@bp.delete("/session")
def sign_out():
    auth.end_session()
    return {"user": None, "csrfToken": auth.csrf_token()}


@bp.post("/users")
def sign_up():
    body = json_object()
    g.user = auth.sign_up(_text(body, "username"), _text(body, "password"))
    auth.start_session(g.user)
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}, 201


# --- albums ----------------------------------------------------------------------------------


@bp.get("/albums")
@login_required
def list_albums():
    # One query either way; the validator spares sending the same list again.
    response = jsonify(albums=[album_json(*row) for row in queries.list_albums()])
    response.add_etag()
    response.headers["Cache-Control"] = "private, no-cache"
    return response.make_conditional(request)


@bp.post("/albums")
@login_required
def create_album():
    album = actions.create_album(_text(json_object(), "name"))
    return {"album": album_json(album, {}, None)}, 201


@bp.get("/albums/<int:album_id>")
@login_required
def get_album(album_id: int):
    album = queries.get_album(album_id)
    return _conditional(
        album, lambda: {"album": _album_json(album), "labels": queries.labels_in(album)}
    )


@bp.patch("/albums/<int:album_id>")
@login_required
def rename_album(album_id: int):
    album = actions.rename_album(queries.get_album(album_id), _text(json_object(), "name"))
    return {"album": _album_json(album)}


@bp.delete("/albums/<int:album_id>")
@login_required
def delete_album(album_id: int):
    actions.delete_album(queries.get_album(album_id))
    return "", 204


# --- images ----------------------------------------------------------------------------------


@bp.get("/albums/<int:album_id>/images")
@login_required
def list_images(album_id: int):
    album, page = queries.get_album(album_id), _page()
    return _conditional(album, lambda: _images_json(album, page))


@bp.get("/albums/<int:album_id>/changes")
@login_required
def album_changes(album_id: int):
    """The album's photos changed since `since` (the token the last answer gave): what a page
    polls while photos are in flight."""
    album, page = queries.get_album(album_id), _page()
    now = datetime.now(UTC)
    body: dict[str, Any] = {"since": _since_token(now), "images": [], "reload": False}
    since = _since(request.args.get("since"))
    if since is None:  # the first call only starts the watch
        return body
    changed = queries.changed_images(album, since, now)
    if changed is None:
        body["reload"] = True
    elif changed:
        body["images"] = [image_json(i, page.sort) for i in changed]
        body["album"] = _album_json(album)
    return body


def _since_token(moment: datetime) -> str:
    return base64.urlsafe_b64encode(moment.isoformat().encode()).decode()


def _since(token: str | None) -> datetime | None:
    if not token:
        return None
    try:
        moment = datetime.fromisoformat(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, UnicodeError, binascii.Error):
        moment = None
    if moment is not None and not moment.tzinfo:
        moment = moment.replace(tzinfo=UTC)
    # Only moments this service could have handed out: year 1 would overflow the query's
    # arithmetic (since minus the slack and patience windows).
    if moment is None or not SINCE_EARLIEST <= moment <= datetime.now(UTC) + timedelta(days=1):
        raise BadRequest("since is a token from an earlier answer of this endpoint.")
    return moment


def _conditional(album: Album, answer: Callable[[], dict[str, Any]]) -> Response:
    """`answer()` with an ETag, or 304 when the client has it already: the album's state is
    two index lookups, so an unchanged album is never listed again."""
    state = queries.album_state(album)
    etag = None
    if state.settled(datetime.now(UTC)):
        last = state.last_change.isoformat() if state.last_change else ""
        validator = "|".join(
            (
                SHAPES,
                str(album.id),
                album.name,
                str(album.removals),
                last,
                str(request.query_string),
            )
        )
        etag = hashlib.sha256(validator.encode()).hexdigest()[:32]
        if request.if_none_match.contains(etag):
            response = Response(status=304)
            response.set_etag(etag)
            return response
    response = jsonify(answer())
    if etag:
        response.set_etag(etag)
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@bp.post("/albums/<int:album_id>/images")
@login_required
def upload_images(album_id: int):
    """Multipart, one or more `file` fields; each file succeeds or fails on its own."""
    album = queries.get_album(album_id)
    files = uploaded_files()
    if not files:
        raise BadRequest("Send one or more files in the multipart field 'file'.")
    created, duplicates, errors = [], [], []
    for file in files:
        try:
            created.append(image_json(actions.upload(album, file)))
        except Duplicate as e:
            duplicates.append(
                {
                    "fileName": e.file_name,
                    "message": e.message,
                    "duplicateOf": image_json(e.existing),
                }
            )
        except HTTPException as e:
            errors.append({"fileName": file.filename, "error": e.description, "status": e.code})
    body: dict[str, Any] = {"images": created, "duplicates": duplicates, "errors": errors}
    if created:
        return body, 201
    if errors:
        return {"error": errors[0]["error"], **body}, errors[0]["status"]
    return {"error": duplicates[0]["message"], **body}, 409


@bp.get("/images")
@login_required
def search_images():
    """Photos across all the user's albums, a page at a time; `label` narrows them."""
    return _images_json(None, _page())


@bp.get("/labels")
@login_required
def list_labels():
    return {"labels": queries.labels_in(None)}


@bp.get("/images/<image_id>")
@login_required
def get_image(image_id: str):
    return {"image": image_json(queries.get_image(image_id))}


@bp.patch("/images/<image_id>")
@login_required
def move_image(image_id: str):
    """Move a photo to another album: `{"albumId": 7}`."""
    image = queries.get_image(image_id)
    album = queries.get_album(_album_id(json_object()))
    try:
        return {"image": image_json(actions.move_image(image, album))}
    except Duplicate as e:
        return {"error": e.message, "duplicateOf": image_json(e.existing)}, 409


@bp.post("/images/bulk")
@login_required
def bulk_images():
    """Delete or move many photos: `{"action": "delete"|"move", "ids": [...], "albumId": n}`;
    each photo succeeds or fails on its own."""
    body = json_object()
    action = body.get("action")
    if action not in ("delete", "move"):
        raise BadRequest('The field \'action\' is "delete" or "move".')
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("The field 'ids' is required and must be a list of photo ids.")
    if len(ids) > MAX_BULK:
        raise BadRequest(f"At most {MAX_BULK} photos at a time.")
    album = queries.get_album(_album_id(body)) if action == "move" else None
    done: list[str] = []
    errors: list[dict[str, Any]] = []
    for image_id in dict.fromkeys(ids):
        try:
            image = queries.get_image(image_id)
            if album is None:
                actions.delete_image(image)
            else:
                actions.move_image(image, album)
            done.append(image_id)
        except Duplicate as e:
            errors.append({"id": image_id, "error": e.message, "status": 409})
        except HTTPException as e:
            errors.append({"id": image_id, "error": e.description, "status": e.code})
    return {"deleted" if album is None else "moved": done, "errors": errors}


@bp.delete("/images/<image_id>")
@login_required
def delete_image(image_id: str):
    actions.delete_image(queries.get_image(image_id))
    return "", 204


@bp.post("/images/<image_id>/retry")
@login_required
def retry_image(image_id: str):
    return {"image": image_json(actions.retry(queries.get_image(image_id)))}, 202
