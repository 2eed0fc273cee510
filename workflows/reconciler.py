"""Nothing stuck: images whose workflow event was lost are sent through it again.

Which work is lost is the core's one rule (imagerec.states, Patience): an upload no step has
touched once the first hop's retries are over (an event lost in the web's send queue or in an
InMemoryChannel's memory), a photo in processing once every hop's could be, and anything in
flight last written before the local runner that held its events started again. Re-sending
the uploaded event is safe because every step is idempotent. `failed` images are left for a
person to retry.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from imagerec.blobstore import BlobStore, photo_keys
from imagerec.events import UPLOADED, EmitFailed, emit, new_event
from imagerec.images import uploaded_event_data
from imagerec.logs import event_fields
from imagerec.models import Image
from imagerec.states import Patience, retry, retryable

log = logging.getLogger("imagerec.reconciler")


def resend_stuck(
    session: Session,
    sink: str,
    patience: Patience,
    now: datetime | None = None,
    carrier_since: datetime | None = None,
) -> list[str]:
    """Re-send the uploaded event of every image whose work is lost; returns the ids sent.

    `carrier_since`: when the runner that delivers events started, if it keeps them in memory
    (imagerec dev): work last written before that went with the runner before it.
    """
    cutoffs = patience.lost_before(now or datetime.now(UTC), carrier_since)
    stuck = session.scalars(
        select(Image).where(retryable(cutoffs, failed=False)).order_by(Image.updated_at)
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
        _touch(session, image, cutoffs)
        sent.append(image.id)
        log.info("re-sent stuck image %s", image.id, extra=event_fields(event))
    return sent


def _touch(session: Session, image: Image, cutoffs: dict) -> None:
    """Mark a re-sent image `uploaded` (and now), so it is not sent again before it has had
    time to be processed.

    Conditional, by the core's rules: the pipeline may already have finished it (a broker can
    answer only after its subscribers did) or taken it up again (extract-metadata moved it to
    processing), and neither must go back to `uploaded`; one that failed meanwhile is left
    for a person.
    """
    retry(session, image, cutoffs, failed=False, keep_reason=True)
    session.commit()


# What the service's keys start with (imagerec.blobstore.original_key): user, album, image id.
_PHOTO_KEY = re.compile(r"^\d+/\d+/([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.")


def sweep_orphans(session: Session, blobs: BlobStore, grace: float) -> list[str]:
    """Delete the blobs no photo row owns that were left alone for `grace` seconds; returns
    their keys.

    Orphans come from an upload whose row was never committed (the database went away, the
    album was deleted meanwhile), a thumbnail written after its photo was deleted, or a
    delete whose blob store was down. `grace` must cover an outside emitter's blob waiting
    for extract-metadata to make its row: the first hop's budget (Settings.untouched_after_
    seconds). Keys the service does not make are never touched.
    """
    old = [
        (key, match.group(1))
        for key, age in blobs.ages()
        if age > grace and (match := _PHOTO_KEY.match(key))
    ]
    deleted = []
    for start in range(0, len(old), 500):
        batch = old[start : start + 500]
        originals = session.scalars(
            select(Image.blob_key).where(Image.id.in_({image_id for _, image_id in batch}))
        )
        owned = {key for original in originals for key in photo_keys(original)}
        for key, _ in batch:
            if key not in owned:
                blobs.delete(key)
                deleted.append(key)
                log.info("deleted orphaned blob %s", key)
    return deleted


class Reconciler:
    """Runs `resend_stuck` every `interval` seconds in a background thread; `carrier_since`
    says when the runner delivering its events (re)started. With `blobs`, it also runs
    `sweep_orphans` (`orphan_grace`) at once and then every half grace."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sink: str,
        patience: Patience,
        interval: float,
        carrier_since: Callable[[], datetime | None] = lambda: None,
        blobs: BlobStore | None = None,
        orphan_grace: float = 0.0,
    ) -> None:
        self.sessions, self.sink = sessions, sink
        self.patience, self.interval = patience, interval
        self.carrier_since = carrier_since
        self.blobs, self.orphan_grace = blobs, orphan_grace
        self._next_sweep = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # The first round at once: after a restart, the work the old runner held is lost now.
        while True:
            try:
                with self.sessions() as session:
                    resend_stuck(
                        session, self.sink, self.patience, carrier_since=self.carrier_since()
                    )
                    if self.blobs is not None and time.monotonic() >= self._next_sweep:
                        self._next_sweep = time.monotonic() + self.orphan_grace / 2
                        sweep_orphans(session, self.blobs, self.orphan_grace)
            except Exception:  # a database or store hiccup must not end the loop
                log.exception("reconciler round failed")
            if self._stop.wait(self.interval):
                return
