"""Reading albums and photos for the signed-in user: the loaders every view starts with,
and the listings the pages and the JSON API show.

Every loader 404s on anything the signed-in user does not own: another user's album and a
missing one look the same, so ids leak nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app, g
from sqlalchemy import ColumnElement, Select, and_, case, func, literal, or_, select, tuple_
from sqlalchemy.orm import selectinload
from werkzeug.exceptions import BadRequest, NotFound

from imagerec import jsontext
from imagerec.models import TAKEN_KEY, Album, Detection, Image, Status
from imagerec.states import Patience, is_retryable
from web.db import aware, get_session

MAX_ROW_ID = 2**31 - 1  # an INTEGER key; anything larger cannot name a row
IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # as the uploaded event's schema
DEFAULT_PAGE = 100
MAX_PAGE = 500
# A cursor of ours is about 150 characters; nothing much longer is decoded.
MAX_CURSOR = 1024


def get_album(album_id: int) -> Album:
    album = get_session().get(Album, album_id) if 0 < album_id <= MAX_ROW_ID else None
    if album is None or album.user_id != g.user.id:
        raise NotFound("No such album.")
    return album


def get_image(image_id: str) -> Image:
    image = (
        get_session().get(Image, image_id, options=[selectinload(Image.detections)])
        if IMAGE_ID.match(image_id)
        else None
    )
    if image is None or image.user_id != g.user.id:
        raise NotFound("No such photo.")
    return image


def list_albums() -> list[tuple[Album, dict[str, int], str | None]]:
    """The user's albums, newest first, each with its photos counted by state and its cover
    photo's id: one query, however many albums."""
    counts = (
        select(Image.album_id, *(_count_where(Image.status.in_(s)).label(k) for k, s in _STATES))
        .where(Image.user_id == g.user.id)
        .group_by(Image.album_id)
        .subquery()
    )
    cover = (
        select(Image.id)
        .where(Image.album_id == Album.id, Image.thumbnail_key.is_not(None))
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(1)
        .correlate(Album)
        .scalar_subquery()
    )
    rows = get_session().execute(
        select(Album, *(counts.c[k] for k, _ in _STATES), cover)
        .outerjoin(counts, counts.c.album_id == Album.id)
        .where(Album.user_id == g.user.id)
        .order_by(Album.created_at.desc(), Album.id.desc())
    )
    return [
        (album, {k: n or 0 for (k, _), n in zip(_STATES, numbers, strict=True)}, cover_id)
        for album, *numbers, cover_id in rows
    ]


# How the album object counts photos: a waiting photo is counted as processing.
_STATES = (
    ("done", (Status.DONE,)),
    ("processing", (Status.UPLOADED, Status.PROCESSING)),
    ("rejected", (Status.REJECTED,)),
    ("failed", (Status.FAILED,)),
)


def _count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def album_counts(album: Album) -> dict[str, int]:
    """The album's photos by state, as `list_albums` counts them."""
    by_status = dict(
        get_session()
        .execute(
            select(Image.status, func.count(Image.id))
            .where(Image.album_id == album.id)
            .group_by(Image.status)
        )
        .all()
    )
    return {k: sum(by_status.get(s, 0) for s in states) for k, states in _STATES}


def cover_of(album: Album) -> str | None:
    return get_session().scalar(
        select(Image.id)
        .where(Image.album_id == album.id, Image.thumbnail_key.is_not(None))
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class Page:
    """Which photos to list: in what order, how many, from where (`cursor`), with what label."""

    sort: str = "uploaded"  # or "taken"
    order: str = "desc"  # or "asc"
    limit: int = DEFAULT_PAGE
    cursor: str | None = None
    label: str | None = None


def list_images(album: Album | None, page: Page = Page()) -> tuple[list[Image], str | None]:
    """One page of the photos of an album (or of all the user's albums), and the cursor of
    the next page (None after the last)."""
    query = page_query(
        Image.album_id == album.id if album is not None else Image.user_id == g.user.id, page
    )
    images = list(get_session().scalars(query.options(selectinload(Image.detections))))
    if len(images) <= page.limit:
        return images, None
    images = images[: page.limit]
    return images, encode_cursor(page, images[-1])


def page_query(owner: ColumnElement[bool], page: Page) -> Select[tuple[Image]]:
    """Keyset pagination: each page starts after the last row of the one before, so a page
    deep in a large album costs what the first does (an index range scan; see
    imagerec/models.py), and rows added meanwhile neither repeat nor vanish."""
    key = TAKEN_KEY if page.sort == "taken" else Image.created_at
    descending = page.order == "desc"
    query = (
        select(Image)
        .where(owner)
        .order_by(*((key.desc(), Image.id.desc()) if descending else (key, Image.id)))
        .limit(page.limit + 1)
    )
    if page.cursor is not None:
        after_key, after_id = decode_cursor(page)
        after = tuple_(key, Image.id)
        bound = tuple_(literal(after_key, key.type), literal(after_id))
        query = query.where(after < bound if descending else after > bound)
    label = printable(page.label or "").strip()[:128]
    if label:
        labelled = select(Detection.image_id).where(func.lower(Detection.label) == label.lower())
        query = query.where(Image.id.in_(labelled))
    return query


def encode_cursor(page: Page, last: Image) -> str:
    key = (last.creation_time or "") if page.sort == "taken" else aware(last.created_at).isoformat()
    raw = json.dumps([page.sort, page.order, key, last.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(page: Page) -> tuple[str | datetime, str]:
    """The sort key and id a cursor continues after; 400 if it is not one of ours, or was made
    for another order."""
    try:
        cursor = page.cursor or ""
        if len(cursor) > MAX_CURSOR:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort, order, key, image_id = jsontext.loads(raw)
        if not (isinstance(key, str) and isinstance(image_id, str)):
            raise ValueError
        if sort == "uploaded":
            key = aware(datetime.fromisoformat(key))
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("The cursor is not one this service gave out.") from None
    if (sort, order) != (page.sort, page.order):
        raise BadRequest("The cursor belongs to another sort order; start from the first page.")
    return key, image_id


def labels_in(album: Album | None) -> list[dict[str, Any]]:
    """Each label (in one album, or all) with the number of photos showing it, most first."""
    photos = func.count(func.distinct(Detection.image_id))
    query = (
        select(Detection.label, photos)
        .join(Image, Image.id == Detection.image_id)
        .where(Image.user_id == g.user.id)
        .group_by(Detection.label)
        .order_by(photos.desc(), Detection.label)
    )
    if album is not None:
        query = query.where(Image.album_id == album.id)
    return [{"label": label, "count": n} for label, n in get_session().execute(query).all()]


def retry_patience() -> Patience:
    """A person's patience (imagerec.states' rule): an upload untouched for a while may be
    started again by hand, a photo in processing only once Knative has surely given up."""
    config = current_app.config
    return Patience(config["RETRY_UPLOADED_AFTER_SECONDS"], config["STUCK_AFTER_SECONDS"])


def can_retry(image: Image) -> bool:
    """Failed photos, and photos the pipeline has not moved on for a while (none spins forever)."""
    return is_retryable(image, retry_patience().lost_before(datetime.now(UTC)))


def printable(text: str) -> str:
    """Without control characters (NUL included, which PostgreSQL text cannot hold)."""
    return "".join(c for c in text if c.isprintable())


# --- watching an album -----------------------------------------------------------------------

# How long a writer may take from stamping a row's updated_at to committing it: a row can
# become visible with an updated_at this much older than rows committed before it.
COMMIT_SLACK = timedelta(seconds=60)
MAX_CHANGES = 500
IN_FLIGHT = (Status.UPLOADED, Status.PROCESSING)


@dataclass(frozen=True)
class AlbumState:
    last_change: datetime | None
    in_flight: bool

    def settled(self, now: datetime) -> bool:
        """Nothing being processed, and no write that may still be committing: the album can
        then only change through a new write, which moves `last_change` or the album's
        `removals`."""
        recent = self.last_change is not None and aware(self.last_change) > now - COMMIT_SLACK
        return not self.in_flight and not recent


def album_state(album: Album) -> AlbumState:
    """Two index lookups, however large the album: no photo is read."""
    # ORDER BY ... LIMIT 1 rather than max(): a seek to the index's end on every database.
    last_change = (
        select(Image.updated_at)
        .where(Image.album_id == album.id)
        .order_by(Image.updated_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    in_flight = (
        select(Image.id).where(Image.album_id == album.id, Image.status.in_(IN_FLIGHT)).exists()
    )
    row = get_session().execute(select(last_change, in_flight)).one()
    return AlbumState(row[0], bool(row[1]))


def changed_images(album: Album, since: datetime, now: datetime) -> list[Image] | None:
    """The album's photos written at `since` or later (and up to COMMIT_SLACK before, which a
    late commit may carry), plus in-flight photos that became retryable meanwhile; None when
    more than MAX_CHANGES changed (the caller should list the album again)."""
    patience = retry_patience()
    written = Image.updated_at >= since - COMMIT_SLACK
    became_retryable = [
        and_(
            Image.status == status,
            Image.updated_at >= since - COMMIT_SLACK - timedelta(seconds=seconds),
            Image.updated_at < now - timedelta(seconds=seconds),
        )
        for status, seconds in (
            (Status.UPLOADED, patience.uploaded),
            (Status.PROCESSING, patience.processing),
        )
    ]
    images = list(
        get_session().scalars(
            select(Image)
            .where(
                or_(
                    *(
                        and_(Image.album_id == album.id, term)
                        for term in (written, *became_retryable)
                    )
                )
            )
            .order_by(Image.updated_at.desc(), Image.id)
            .limit(MAX_CHANGES + 1)
            .options(selectinload(Image.detections))
        )
    )
    return images if len(images) <= MAX_CHANGES else None
