"""A photo's life, in one place: which status may follow which, for every writer.

    uploaded -> processing -> done | rejected | failed
    failed -> uploaded only by a retry (a person's, or the reconciler's for a stuck photo),
    and from there -> processing again; done and rejected are final.

`uploaded` also goes straight to an outcome: a retry or the reconciler moves a photo back to
`uploaded` while its first run may still finish, and that outcome is as true as the next one.
Writing the status the photo already has is no change (a redelivery): `advance` says so, and
the caller writes nothing. Every move is one conditional UPDATE, so two writers at once (a
late outcome and a retry, two redeliveries, two retries) cannot both win on PostgreSQL or
SQLite.

When a photo's work is lost (the one rule the reconciler, the web's retry and the album page
share, `lost_before`): nobody may still be delivering an event of its run. An `uploaded` photo
that no step has touched is lost once the first hop's retries are over (extract-metadata moves
it to `processing` on first touch); a `processing` one only once every hop's retries could be
over; and either, at once, when it was last written before the carrier that held its events
(the local runner: its deliveries live in memory) started again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, false, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from imagerec.models import Image, Status, aware

log = logging.getLogger("imagerec.states")

FINAL = frozenset({Status.DONE, Status.REJECTED})
_FOLLOWS: dict[Status, frozenset[Status]] = {
    Status.PROCESSING: frozenset({Status.UPLOADED}),
    Status.DONE: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.REJECTED: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.FAILED: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.UPLOADED: frozenset(),
}
IN_FLIGHT = frozenset({Status.UPLOADED, Status.PROCESSING})


@dataclass(frozen=True)
class Patience:
    """Seconds a photo in flight goes unchanged before its work counts as lost, per status."""

    uploaded: float
    processing: float

    def lost_before(
        self, now: datetime, carrier_since: datetime | None = None
    ) -> dict[Status, datetime]:
        """Per in-flight status, the moment before which a last write means lost work."""
        cutoffs = {
            Status.UPLOADED: now - timedelta(seconds=self.uploaded),
            Status.PROCESSING: now - timedelta(seconds=self.processing),
        }
        if carrier_since is not None:
            cutoffs = {status: max(cutoff, carrier_since) for status, cutoff in cutoffs.items()}
        return cutoffs


def retryable(cutoffs: dict[Status, datetime], failed: bool = True) -> ColumnElement[bool]:
    """The rows a retry may start again: lost work (`cutoffs`, Patience.lost_before) and,
    with `failed`, failed photos (a person's retry; the reconciler leaves those alone)."""
    terms = [and_(Image.status == str(s), Image.updated_at < c) for s, c in cutoffs.items()]
    return or_(Image.status == str(Status.FAILED) if failed else false(), *terms)


def is_retryable(image: Image, cutoffs: dict[Status, datetime], failed: bool = True) -> bool:
    """`retryable` for a row already loaded (what the album page offers)."""
    if image.status == Status.FAILED:
        return failed
    cutoff = cutoffs.get(Status(image.status))
    return cutoff is not None and image.updated_at is not None and aware(image.updated_at) < cutoff


class IllegalTransition(Exception):
    """The photo's status may not become the one asked for (e.g. a done photo `rejected`)."""


class Vanished(IllegalTransition):
    """The photo's row was deleted (with its album, or on its own) while a writer held it."""


def may_follow(current: str, new: Status) -> bool:
    return current in _FOLLOWS[new]


def advance(session: Session, image: Image, new: Status) -> bool:
    """Move `image` to `new` inside the caller's transaction.

    True: moved (the caller writes the rest of the outcome). False: it already was `new`,
    a redelivery, so nothing is to be written. Raises IllegalTransition (and logs it) when
    the rules forbid the move: the caller's transaction is left for it to roll back.
    """
    sources = Image.status.in_([str(s) for s in _FOLLOWS[new]])
    moved = _conditional_update(session, image, [sources], {"status": str(new)})
    if moved:
        return True
    current = _current_status(session, image)
    if current is None:
        log.warning("image %s was deleted meanwhile: refused to make it %s", image.id, new)
        raise Vanished(f"image {image.id} was deleted meanwhile; it cannot become {new}")
    if current == new:
        return False
    log.warning("image %s is %s: refused to make it %s", image.id, current, new)
    raise IllegalTransition(f"image {image.id} is {current}; it cannot become {new}")


def retry(
    session: Session,
    image: Image,
    cutoffs: dict[Status, datetime],
    failed: bool = True,
    keep_reason: bool = False,
) -> bool:
    """Send a photo back to `uploaded` (its run is started again) if it is `retryable` now and
    still in the album and under the key `image` was loaded with, so the event the caller then
    sends names the row as committed; False, and nothing written, otherwise.

    The UPDATE stamps updated_at, so the photo is no longer lost: of two retries at once, one
    wins (PostgreSQL re-checks the condition on the row the first one committed).
    """
    values: dict[str, object] = {"status": str(Status.UPLOADED)}
    if not keep_reason:
        values["reason"] = None
    where = [
        Image.album_id == image.album_id,
        Image.blob_key == image.blob_key,
        retryable(cutoffs, failed),
    ]
    return _conditional_update(session, image, where, values)


def move(session: Session, image: Image, **columns: object) -> bool:
    """Write `columns` (a new album and keys) if the photo is not in flight and still where
    `image` was loaded: the pipeline's events name the album and key they started with, so a
    retry that slipped in first wins and the move is refused (False, nothing written)."""
    where = [
        Image.album_id == image.album_id,
        Image.blob_key == image.blob_key,
        Image.status.not_in([str(s) for s in IN_FLIGHT]),
    ]
    return _conditional_update(session, image, where, columns)


def _conditional_update(
    session: Session,
    image: Image,
    where: list[ColumnElement[bool]],
    values: dict[str, object],
) -> bool:
    result = session.execute(
        update(Image)
        .where(Image.id == image.id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    # The row already holds it: the object agrees without a second UPDATE. updated_at was
    # set by the statement (the column's onupdate) and is read back when next used.
    for name, value in values.items():
        set_committed_value(image, name, value)
    session.expire(image, ["updated_at"])
    return True


def _current_status(session: Session, image: Image) -> str | None:
    """The row's status as stored now; None when it is gone (a refresh would raise)."""
    current = session.scalar(select(Image.status).where(Image.id == image.id))
    if current is not None:
        set_committed_value(image, "status", current)
    return current
