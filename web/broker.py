"""Handing events to the Broker (K_SINK) in the background, so no user waits on the pipeline.

An event that cannot be delivered is only logged: its image stays `uploaded`, which the
album page shows, and the reconciler (workflows/) or the retry action sends it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from cloudevents.http import CloudEvent
from flask import Flask, current_app

from imagerec.events import EmitFailed, emit
from imagerec.logs import event_fields

log = logging.getLogger("imagerec.web.broker")


class EventSender:
    """A daemon thread posting queued events to one sink, a few attempts each."""

    def __init__(self, sink: str | None, timeout: float, attempts: int) -> None:
        self.sink = sink
        self.timeout = timeout
        self.attempts = attempts
        self._queue: queue.Queue[CloudEvent] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: CloudEvent) -> bool:
        """Queue `event`; False when there is no sink to send it to."""
        if not self.sink:
            log.warning(
                "no K_SINK configured: %s for %s stays unsent", event["type"], event.get("subject")
            )
            return False
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
                self._thread.start()
        self._queue.put(event)
        return True

    def join(self) -> None:
        """Wait until every queued event was delivered or given up (tests, shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                self._deliver(event)
            finally:
                self._queue.task_done()

    def _deliver(self, event: CloudEvent) -> None:
        for attempt in range(self.attempts):
            try:
                emit(event, self.sink, timeout=self.timeout)
                log.info("sent %s", event["type"], extra=event_fields(event))
                return
            except EmitFailed as e:
                log.warning("sending %s (attempt %d): %s", event.get("subject"), attempt + 1, e)
            except Exception:  # never let one bad event end the thread
                log.exception("sending %s", event.get("subject"))
                return
            if attempt + 1 < self.attempts:
                time.sleep(0.5 * 2**attempt)
        log.error("gave up sending %s for %s", event["type"], event.get("subject"))


def init_app(app: Flask) -> None:
    app.extensions["imagerec_events"] = EventSender(
        app.config["SINK"], app.config["SEND_TIMEOUT_SECONDS"], app.config["SEND_ATTEMPTS"]
    )


def sender() -> EventSender:
    return current_app.extensions["imagerec_events"]
