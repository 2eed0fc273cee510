"""How the web service says no: the duplicate-photo refusal, and the app's error handlers
(JSON `{"error": "<one sentence>"}` under /api/, the error page elsewhere)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy.exc
from flask import Flask, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable

from imagerec.blobstore import BlobStoreFull, BlobStoreUnavailable
from imagerec.models import Image
from web.bodies import Limit, too_large

log = logging.getLogger("imagerec.web")


@dataclass
class Duplicate(Exception):
    """These bytes are already in the album as `existing`."""

    file_name: str
    existing: Image

    @property
    def message(self) -> str:
        return f"{self.file_name} is already in this album as {self.existing.file_name}."


class InsufficientStorage(HTTPException):
    code = 507
    description = "The photo store is full."


def photo_store_error(error: BlobStoreUnavailable) -> HTTPException:
    """What the user is told when the blob store refuses: full (507), or unreachable (503)."""
    if isinstance(error, BlobStoreFull):
        return InsufficientStorage(
            "The photo store is full, so nothing was stored; try again once space is freed."
        )
    return ServiceUnavailable("The photo store is unreachable; try again shortly.")


def handle_http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge) and error.description == (
        RequestEntityTooLarge.description
    ):
        limit = g.get("body_limit") or Limit(request.max_content_length or 0, "requests")
        error.description = too_large(limit)
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
