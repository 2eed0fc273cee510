"""Request bodies: each route takes only what it can use, and what it cannot is refused unread.

Three limits, one per kind of route: JSON bodies and forms are a few short fields
(MAX_JSON_BYTES, MAX_FORM_BYTES); only the two upload routes take big multipart bodies, and
only from a signed-in session that sent its CSRF token in a header or the query, never in the
body (which would have to be parsed to find it). The server asks `admit_request` once a
request's headers are in (imagerec/serve.py), so a body none of this allows is answered before
a byte of it is read; the same limits hold again inside the app, for any other server.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, current_app, g, request
from itsdangerous import BadSignature
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.http import parse_cookie, parse_options_header

from imagerec import jsontext
from imagerec.serve import Admission, BodyLimit, Refusal, RequestHead
from web.present import file_size

# JSON bodies are a few short fields; the largest, a bulk request of 500 photo ids of at most
# 64 characters, is under 36 KB. Nothing larger is read, let alone parsed.
MAX_JSON_BYTES = 48 * 1024
# A form (sign-in, sign-up, an album's name) is a few short fields too.
MAX_FORM_BYTES = 48 * 1024
# One request may carry several files; each is still held to MAX_UPLOAD_BYTES on its own.
MAX_FILES_PER_REQUEST = 20
# The parts an upload may have: its files, and room for the empty file field a browser sends.
MAX_UPLOAD_PARTS = MAX_FILES_PER_REQUEST + 5
UPLOAD_ENDPOINTS = frozenset({"albums.upload", "api.upload_images"})
CSRF_FIELD = "csrf_token"  # also the query parameter an upload may carry it in
CSRF_HEADER = "X-CSRF-Token"
UPLOAD_NEEDS_SESSION = "Sign in, and send the page's CSRF token with the upload."


@dataclass(frozen=True)
class Limit:
    max_bytes: int
    kind: str  # what the limit is for, as the 413 names it: "forms"


def route_limit(app: Flask, endpoint: str | None, mimetype: str) -> Limit:
    if endpoint in UPLOAD_ENDPOINTS:
        return Limit(app.config["MAX_CONTENT_LENGTH"], "uploads")
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return Limit(MAX_JSON_BYTES, "JSON bodies")
    return Limit(MAX_FORM_BYTES, "forms")


def too_large(limit: Limit) -> str:
    return f"The request is larger than the {file_size(limit.max_bytes)} limit for {limit.kind}."


def token_matches(sent: str | None, session: Any) -> bool:
    expected = session.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest((sent or "").encode(), expected.encode())


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
    try:
        parts = request.files.getlist("file")
    except RequestEntityTooLarge as e:
        if e.description != RequestEntityTooLarge.description or _over_length():
            raise
        # Werkzeug stopped at MAX_UPLOAD_PARTS parts (or at a text field over its memory cap).
        raise RequestEntityTooLarge(
            f"Send at most {MAX_FILES_PER_REQUEST} files at once (this request has more than "
            f"{MAX_UPLOAD_PARTS} parts, or a text field over "
            f"{file_size(request.max_form_memory_size)})."
        ) from None
    files = [f for f in parts if f.filename or f.content_length]
    if len(files) > MAX_FILES_PER_REQUEST:
        raise RequestEntityTooLarge(
            f"Send at most {MAX_FILES_PER_REQUEST} files at once ({len(files)} were sent)."
        )
    return files


def _over_length() -> bool:
    length, limit = request.content_length, request.max_content_length
    return length is None or (limit is not None and length > limit)


def _cap_bodies() -> None:
    # Before anything reads the body (the CSRF check may look at a form): the limit is applied
    # when the input stream is made, so a 200 MB "JSON" body is refused unread.
    limit = route_limit(current_app, request.endpoint, request.mimetype)
    g.body_limit = limit
    request.max_content_length = limit.max_bytes
    if request.endpoint in UPLOAD_ENDPOINTS:
        request.max_form_parts = MAX_UPLOAD_PARTS


def admit_request(app: Flask) -> Admission:
    """The server's question before it reads a body (imagerec/serve.py): the route's limit,
    and for an upload larger than a form, a signed-in session that sent its CSRF token."""
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]

    def admit(head: RequestHead) -> Refusal | BodyLimit:
        try:
            endpoint = app.url_map.bind("localhost").match(head.path, method=head.method)[0]
        except HTTPException:
            endpoint = None  # 404, 405 or a redirect: answered without the body
        mimetype, _ = parse_options_header(head.headers.get("CONTENT_TYPE", ""))
        limit = route_limit(app, endpoint, mimetype)
        if endpoint in UPLOAD_ENDPOINTS and not _may_upload(head):
            # Its body could only be answered 401 or 403: no more of it than a form is read.
            if head.content_length > MAX_FORM_BYTES:
                return Refusal(403, "Forbidden", UPLOAD_NEEDS_SESSION)
            limit = Limit(MAX_FORM_BYTES, "uploads without a session and its CSRF token")
        return BodyLimit(limit.max_bytes, too_large(limit))

    def _may_upload(head: RequestHead) -> bool:
        session = _session(head)
        sent = head.headers.get(CSRF_HEADER.upper().replace("-", "_")) or next(
            iter(parse_qs(head.query).get(CSRF_FIELD, [])), None
        )
        return "user_id" in session and token_matches(sent, session)

    def _session(head: RequestHead) -> dict[str, Any]:
        cookie = parse_cookie(head.headers.get("COOKIE", "")).get(app.config["SESSION_COOKIE_NAME"])
        if not cookie or serializer is None:
            return {}
        try:
            age = int(app.permanent_session_lifetime.total_seconds())
            return serializer.loads(cookie, max_age=age)
        except BadSignature:
            return {}

    return admit


def init_app(app: Flask) -> None:
    app.before_request(_cap_bodies)
    app.admit_request = admit_request(app)  # type: ignore[attr-defined]
