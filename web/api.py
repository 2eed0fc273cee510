"""The JSON API (documented in web/API.md): what the album page's script and the CLI use.

Errors are {"error": "<one sentence>"} with the matching status; another user's resources
answer 404 exactly like missing ones.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from flask import Blueprint, Flask, g, jsonify, render_template, request
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    ServiceUnavailable,
)

from web import auth, library
from web.auth import login_required

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger("imagerec.web")


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("Send a JSON object (Content-Type: application/json).")
    return body


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"The field {field!r} is required and must be a string.")
    try:
        value.encode()
    except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"): not text
        raise BadRequest(f"The field {field!r} is not valid Unicode text.") from None
    return value


def _user_json() -> dict[str, Any] | None:
    return None if g.user is None else {"id": g.user.id, "username": g.user.username}


# --- session and users -----------------------------------------------------------------------


@bp.get("/session")
def get_session_state():
    """Who is signed in, and the CSRF token every state-changing call must send."""
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}


@bp.post("/session")
def sign_in():
    body = _json_body()
    g.user = auth.sign_in(_text(body, "username"), _text(body, "password"))
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}


@bp.delete("/session")
def sign_out():
    auth.end_session()
    return {"user": None, "csrfToken": auth.csrf_token()}


@bp.post("/users")
def sign_up():
    body = _json_body()
    g.user = auth.sign_up(_text(body, "username"), _text(body, "password"))
    auth.start_session(g.user)
    return {"user": _user_json(), "csrfToken": auth.csrf_token()}, 201


# --- albums ----------------------------------------------------------------------------------


@bp.get("/albums")
@login_required
def list_albums():
    return {"albums": library.list_albums()}


@bp.post("/albums")
@login_required
def create_album():
    album = library.create_album(_text(_json_body(), "name"))
    return {"album": library.album_json(album, 0)}, 201


@bp.get("/albums/<int:album_id>")
@login_required
def get_album(album_id: int):
    album = library.get_album(album_id)
    return {
        "album": library.album_json(album, library.count_photos(album)),
        "labels": library.labels_in(album),
    }


@bp.patch("/albums/<int:album_id>")
@login_required
def rename_album(album_id: int):
    album = library.rename_album(library.get_album(album_id), _text(_json_body(), "name"))
    return {"album": library.album_json(album, library.count_photos(album))}


@bp.delete("/albums/<int:album_id>")
@login_required
def delete_album(album_id: int):
    library.delete_album(library.get_album(album_id))
    return "", 204


# --- images ----------------------------------------------------------------------------------


@bp.get("/albums/<int:album_id>/images")
@login_required
def list_images(album_id: int):
    album = library.get_album(album_id)
    images = library.list_images(album, request.args.get("label") or None)
    return {"images": [library.image_json(i) for i in images]}


@bp.post("/albums/<int:album_id>/images")
@login_required
def upload_images(album_id: int):
    """Multipart, one or more `file` fields; each file succeeds or fails on its own."""
    album = library.get_album(album_id)
    files = request.files.getlist("file")
    if not files:
        raise BadRequest("Send one or more files in the multipart field 'file'.")
    created, duplicates, errors = [], [], []
    for file in files:
        try:
            created.append(library.image_json(library.upload(album, file)))
        except library.Duplicate as e:
            duplicates.append(
                {
                    "fileName": e.file_name,
                    "message": e.message,
                    "duplicateOf": library.image_json(e.existing),
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
    """Photos across all the user's albums, newest first; `label` narrows them."""
    images = library.list_images(None, request.args.get("label") or None)
    return {"images": [library.image_json(i) for i in images]}


@bp.get("/labels")
@login_required
def list_labels():
    return {"labels": library.labels_in(None)}


@bp.get("/images/<image_id>")
@login_required
def get_image(image_id: str):
    return {"image": library.image_json(library.get_image(image_id))}


@bp.delete("/images/<image_id>")
@login_required
def delete_image(image_id: str):
    library.delete_image(library.get_image(image_id))
    return "", 204


@bp.post("/images/<image_id>/retry")
@login_required
def retry_image(image_id: str):
    return {"image": library.image_json(library.retry(library.get_image(image_id)))}, 202


# --- errors, for the whole app: JSON under /api/, a page elsewhere ---------------------------


def handle_http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge) and error.description == (
        RequestEntityTooLarge.description
    ):
        limit = library.megabytes(request.max_content_length or 0)
        error.description = f"The request is larger than the limit of {limit}."
    if request.path.startswith("/api/"):
        response = jsonify(error=error.description)
        response.status_code = error.code or 500
        return response
    return render_template("error.html", error=error), error.code or 500


def handle_database_down(error: sqlalchemy.exc.SQLAlchemyError):
    log.error("database unavailable: %s", error)
    return handle_http_error(ServiceUnavailable("The database is unreachable; try again shortly."))


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    for error in (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError):
        app.register_error_handler(error, handle_database_down)
