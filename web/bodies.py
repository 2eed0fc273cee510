"""Request bodies: JSON small and safely parsed, uploads counted, and a body left unread never
breaks the keep-alive connection it came on.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from imagerec import jsontext

# JSON bodies are a few short fields; the largest, a bulk request of 500 photo ids of at most
# 64 characters, is under 36 KB. Nothing larger is read, let alone parsed.
MAX_JSON_BYTES = 48 * 1024
# One request may carry several files; each is still held to MAX_UPLOAD_BYTES on its own.
MAX_FILES_PER_REQUEST = 20
DRAIN_PIECE_BYTES = 64 * 1024


def json_object() -> dict[str, Any]:
    """The request's JSON object, or 400/413 with one sentence."""
    if not request.is_json:
        raise BadRequest("Send a JSON object (Content-Type: application/json).")
    try:
        body = jsontext.loads(request.get_data(cache=True))
    except jsontext.BadJson as e:
        raise BadRequest(f"The body is not a usable JSON object: {e}.") from None
    if not isinstance(body, dict):
        raise BadRequest("Send a JSON object (Content-Type: application/json).")
    return body


def uploaded_files() -> list[FileStorage]:
    """The files of the multipart field `file` (empty form fields left out), at most
    MAX_FILES_PER_REQUEST of them."""
    files = [f for f in request.files.getlist("file") if f.filename or f.content_length]
    if len(files) > MAX_FILES_PER_REQUEST:
        raise RequestEntityTooLarge(
            f"Send at most {MAX_FILES_PER_REQUEST} files at once ({len(files)} were sent)."
        )
    return files


def _cap_json_bodies() -> None:
    # Before anything reads the body (the CSRF check may look at the form): the limit is
    # applied when the input stream is made, so a 200 MB "JSON" body is refused unread.
    if request.is_json:
        request.max_content_length = min(
            request.max_content_length or MAX_JSON_BYTES, MAX_JSON_BYTES
        )


def _drain_unread_body(response: Response) -> Response:
    """Read what is left of a body the answer did not need (a 403, 404 or 413 given first).

    Left unread, it would be taken for the next request on the connection; gunicorn reads at
    most 64 KiB of it and then drops a connection it has just answered `keep-alive` on (and
    it drops a `Connection: close` set by the application), so the client's next request
    fails. Read in small pieces and thrown away: memory stays flat whatever the size.
    """
    stream = request.__dict__.get("stream")  # made only if something read the body
    if stream is None:
        if not request.content_length and "chunked" not in request.headers.get(
            "Transfer-Encoding", ""
        ):
            return response
        # Unlimited here: the body's own Content-Length (or its last chunk) ends it.
        stream = get_input_stream(request.environ, max_content_length=None)
    budget = current_app.config["MAX_CONTENT_LENGTH"] or 0
    try:
        while budget > 0 and (piece := stream.read(min(DRAIN_PIECE_BYTES, budget))):
            budget -= len(piece)
    except (OSError, HTTPException):
        pass  # the client went away, or the body is larger than anything taken: let it go
    return response


def init_app(app: Flask) -> None:
    app.before_request(_cap_json_bodies)
    app.after_request(_drain_unread_body)
