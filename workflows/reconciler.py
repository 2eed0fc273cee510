"""Nothing stuck: images whose workflow event was lost are sent through it again.

An image that has sat in `uploaded` or `processing` longer than the configured time has
lost its event somewhere (the broker was down, a runner restarted, a step stayed down past
its retries without reaching the dead-letter sink). Re-sending the uploaded event is safe
because every step is idempotent. `failed` images are left for a person to retry.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from imagerec.events import UPLOADED, EmitFailed, emit, new_event
from imagerec.images import uploaded_event_data
from imagerec.logs import event_fields
from imagerec.models import Image
from imagerec.states import STUCK, retry

log = logging.getLogger("imagerec.reconciler")


def resend_stuck(
    session: Session, sink: str, older_than: timedelta, now: datetime | None = None
) -> list[str]:
    """Re-send the uploaded event of every stuck image; returns the ids sent."""
    cutoff = (now or datetime.now(UTC)) - older_than
    stuck = session.scalars(
        select(Image)
        .where(Image.status.in_([str(s) for s in STUCK]))
        .where(Image.updated_at < cutoff)
        .order_by(Image.updated_at)
    ).all()
    sent = []
    for image in stuck:
        event = new_event(UPLOADED, "/workflows/reconciler", uploaded_event_data(image), image.id)
        try:
            emit(event, sink)
        except EmitFailed as e:
            log.warning("could not re-send %s: %s", image.id, e, extra=event_fields(event))
            if e.sink_down:
                break  # the rest would fail too; the next round tries again
            continue  # refused for what this image is: the others may still go
        _touch(session, image)
        sent.append(image.id)
        log.info("re-sent stuck image %s", image.id, extra=event_fields(event))
    return sent


def _touch(session: Session, image: Image) -> None:
    """Mark a re-sent image `uploaded` (and now), so it is not sent again before it has had
    time to be processed.

    Conditional, by the core's rules: the pipeline may already have finished it (a broker can
    answer only after its subscribers did), and a finished photo must not go back to
    `uploaded`; one that failed meanwhile is left for a person.
    """
    retry(session, image, STUCK, keep_reason=True)
    session.commit()


class Reconciler:
    """Runs `resend_stuck` every `interval` seconds in a background thread."""

    def __init__(
        self, sessions: sessionmaker[Session], sink: str, older_than: timedelta, interval: float
    ) -> None:
        self.sessions, self.sink = sessions, sink
        self.older_than, self.interval = older_than, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as session:
                    resend_stuck(session, self.sink, self.older_than)
            except Exception:  # a database hiccup must not end the loop
                log.exception("reconciler round failed")
