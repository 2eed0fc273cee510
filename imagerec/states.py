"""A photo's life, in one place: which status may follow which, for every writer.

    uploaded -> processing -> done | rejected | failed
    failed -> uploaded only by a retry (a person's, or the reconciler's for a stuck photo),
    and from there -> processing again; done and rejected are final.

`uploaded` also goes straight to an outcome: a retry or the reconciler moves a photo back to
`uploaded` while its first run may still finish, and that outcome is as true as the next one.
Writing the status the photo already has is no change (a redelivery): `advance` says so, and
the caller writes nothing. Every move is one conditional UPDATE, so two writers at once (a
late outcome and a retry, two redeliveries) cannot both win on PostgreSQL or SQLite.
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from imagerec.models import Image, Status

log = logging.getLogger("imagerec.states")

FINAL = frozenset({Status.DONE, Status.REJECTED})
_FOLLOWS: dict[Status, frozenset[Status]] = {
    Status.PROCESSING: frozenset({Status.UPLOADED}),
    Status.DONE: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.REJECTED: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.FAILED: frozenset({Status.UPLOADED, Status.PROCESSING}),
    Status.UPLOADED: frozenset(),
}
# What a person's retry starts again from: anything not finished (the web adds its own
# patience); the reconciler only re-sends photos that are STUCK, and leaves failed ones.
RETRYABLE = frozenset({Status.UPLOADED, Status.PROCESSING, Status.FAILED})
STUCK = frozenset({Status.UPLOADED, Status.PROCESSING})


class IllegalTransition(Exception):
    """The photo's status may not become the one asked for (e.g. a done photo `rejected`)."""


def may_follow(current: str, new: Status) -> bool:
    return current in _FOLLOWS[new]


def advance(session: Session, image: Image, new: Status) -> bool:
    """Move `image` to `new` inside the caller's transaction.

    True: moved (the caller writes the rest of the outcome). False: it already was `new`,
    a redelivery, so nothing is to be written. Raises IllegalTransition (and logs it) when
    the rules forbid the move: the caller's transaction is left for it to roll back.
    """
    moved = _conditional_update(session, image, new, _FOLLOWS[new], {})
    if moved:
        return True
    current = _current_status(session, image)
    if current == new:
        return False
    log.warning("image %s is %s: refused to make it %s", image.id, current, new)
    raise IllegalTransition(f"image {image.id} is {current}; it cannot become {new}")


def retry(
    session: Session,
    image: Image,
    sources: frozenset[Status] = RETRYABLE,
    keep_reason: bool = False,
) -> bool:
    """Send a photo back to `uploaded` (its run is started again) if its status is one of
    `sources` (a subset of RETRYABLE); False, and nothing written, otherwise."""
    if not sources <= RETRYABLE:
        raise ValueError(f"a retry cannot start from {sorted(sources - RETRYABLE)}")
    extra: dict[str, object] = {} if keep_reason else {"reason": None}
    return _conditional_update(session, image, Status.UPLOADED, sources, extra)


def _conditional_update(
    session: Session,
    image: Image,
    new: Status,
    sources: frozenset[Status],
    extra: dict[str, object],
) -> bool:
    result = session.execute(
        update(Image)
        .where(Image.id == image.id, Image.status.in_([str(s) for s in sources]))
        .values(status=str(new), **extra)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    # The row already holds it: the object agrees without a second UPDATE. updated_at was
    # set by the statement (the column's onupdate) and is read back when next used.
    set_committed_value(image, "status", str(new))
    for name, value in extra.items():
        set_committed_value(image, name, value)
    session.expire(image, ["updated_at"])
    return True


def _current_status(session: Session, image: Image) -> str:
    session.refresh(image, ["status"])
    return image.status
