"""One hop of an event to a subscriber, with Knative's retries, replies and dead letters (§3–§5).

`Dispatcher.deliver(hop, event)` is the whole life of one subscription's delivery, as a generator
that yields each wait before a retry: whoever drives it (the runner) resumes it once that wait is
over, so no thread is held while a delivery waits (Knative's dispatcher schedules retries too).

1. POST the event in binary mode (structured for `format: json`) with `Prefer: reply` and
   `Kn-Namespace`; attempts = 1 + retry, retried on no response, 5xx, 404, 408, 409 and 429,
   waiting `d·2^(k-1)` (exponential), `d·(k-1)` (linear) or 0 (policy or delay missing) before
   retry k, each attempt bounded by `timeout`.
2. Read the answer: 2xx with a CloudEvent is a reply; 2xx with nothing is done; 2xx with another
   body is a 502 failure behind a broker (a Trigger) and simply no reply behind a channel.
3. Forward a reply to the hop's reply address (the Broker, the next Sequence channel...), with the
   same retries; a Trigger's reply carries the TTL the event had at the broker.
4. After the last failure, POST the original event to the dead-letter sink with
   `knativeerrordest`, `knativeerrorcode` and `knativeerrordata` (base64 of at most 768 bytes of
   the body, i.e. ≤ 1024 characters) and without `Prefer: reply`. Like the MT broker, a Trigger
   delivery that timed out, or that failed on a non-CloudEvent 2xx body, reaches the dead-letter
   sink without those extensions.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from imagerec.events import BadEvent, retried
from imagerec.logs import TRACEPARENT, child_traceparent, event_fields
from workflows.connections import Cancel, Connections, Response, SendFailed
from workflows.manifests import Delivery
from workflows.wire import Event, decode, encode, is_cloudevent

log = logging.getLogger("workflows.runner")

TTL = "knativebrokerttl"
ERROR_DATA_BYTES = 768  # base64 of 768 bytes is Knative's 1024-character limit


class Clock(Protocol):
    """Time as the runner sees it: `now()` stamps events, `call_later()` ends a retry's wait.

    Tests inject one that calls back at once (FakeClock in tests/runner_support.py), so backoffs
    take no time.
    `callback` must be quick (the runner's only queues work for a worker): it may run on the
    clock's own thread.
    """

    def now(self) -> datetime: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...


class WallClock:
    """Real time. Pending calls wait in a heap by due time, served by one timer thread.

    The thread starts with the first call and ends on `close()`; a call scheduled later but due
    sooner than another is never held behind it.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # breaks ties in due time: callables do not compare
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def now(self) -> datetime:
        return datetime.now(UTC)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        with self._changed:
            if self._closed:
                return  # the runner has stopped and already accounted for what was waiting
            due = time.monotonic() + seconds
            heapq.heappush(self._due, (due, next(self._order), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="runner-timer", daemon=True)
                self._thread.start()
            self._changed.notify()  # it may be due before whatever the thread is waiting for

    def close(self) -> None:
        """Stop the timer thread; calls not yet due never happen."""
        with self._changed:
            self._closed = True
            self._due.clear()
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while (callback := self._next_due()) is not None:
            try:
                callback()
            except Exception:
                # Dying here would leave every later retry waiting forever.
                log.exception("timer callback failed")

    def _next_due(self) -> Callable[[], None] | None:
        """Wait until the earliest call is due (or an earlier one arrives); None once closed."""
        with self._changed:
            while not self._closed:
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is not None and wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._changed.wait(wait)
            return None


class Stopped(Exception):
    """The runner is stopping: abandon the delivery."""


class Cancelled(Exception):
    """The caller of a synchronous channel went away: its fan-out is abandoned (Knative cancels
    the request's context; nothing is retried or dead-lettered)."""


# What `deliver` returns: it yields the seconds to wait before each retry, and must be resumed
# (next()) once they have passed; it returns whether the event was delivered (or dead-lettered).
Waits = Generator[float, None, bool]


@dataclass(frozen=True)
class Hop:
    """One subscription: where events go, how hard to try, where replies and failures go."""

    name: str  # for the log: "trigger on-uploaded", "sequence process-image step 0"
    url: str
    namespace: str
    delivery: Delivery  # the retry settings in force (already merged per §4)
    dead_letter_sink: str | None = None
    reply_to: str | None = None
    behind_broker: bool = False  # a Trigger: TTL handling, strict replies, MT broker quirks

    @property
    def structured(self) -> bool:
        return self.delivery.format == "json"


@dataclass
class Outcome:
    status: int | None  # None: no response at all
    detail: str
    reply: Event | None = None
    error_extensions: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return retried(self.status)


class Dispatcher:
    def __init__(
        self, stopping: threading.Event, trusted_sources: frozenset[str] | None = None
    ) -> None:
        self._stopping = stopping
        self._trusted_sources = trusted_sources
        self.connections = Connections()

    def deliver(self, hop: Hop, event: Event, cancel: Cancel | None = None) -> Waits:
        """Deliver `event` over `hop`; a generator yielding each wait before a retry.

        Under `cancel` (a synchronous fan-out), every request is aborted once it is cancelled,
        and the generator raises Cancelled.
        """
        # The broker-filter strips the TTL before calling the subscriber (§2).
        sent = event.with_attributes(**{TTL: None}) if hop.behind_broker else event
        outcome = yield from self._attempts(
            hop, "", hop.url, sent, lambda: self._call(hop, sent, cancel), cancel
        )
        if not outcome.ok:
            return (yield from self._dead_letter(hop, event, outcome, cancel))
        if outcome.reply is None or hop.reply_to is None:
            return True
        reply = outcome.reply
        if self._trusted_sources is not None and reply.get("source") not in self._trusted_sources:
            # Forwarded, it would enter the pipeline as one of ours: like a channel under an
            # EventPolicy, refuse it (403, not retried) and dead-letter what the step received.
            detail = f"reply from source {reply.get('source')!r}, which is not one of ours"
            log.warning("%s: %s: %s", hop.name, event, detail, extra=event_fields(event))
            return (yield from self._dead_letter(hop, event, Outcome(403, detail), cancel))
        if hop.behind_broker:
            reply = reply.with_attributes(**{TTL: event.get(TTL)})
        target = hop.reply_to
        forwarded = yield from self._attempts(
            hop, " reply", target, reply, lambda: self._post(hop, target, reply, cancel), cancel
        )
        if not forwarded.ok:
            return (yield from self._dead_letter(hop, event, forwarded, cancel))
        return True

    def _attempts(
        self,
        hop: Hop,
        leg: str,
        url: str,
        event: Event,
        send: Callable[[], Outcome],
        cancel: Cancel | None,
    ) -> Generator[float, None, Outcome]:
        attempts = hop.delivery.attempts
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                yield hop.delivery.wait_before_retry(attempt - 1)
            # Also between legs (reply, dead letter) within one step: stopping is prompt.
            if self._stopping.is_set():
                raise Stopped
            if cancel is not None and cancel.cancelled:
                raise Cancelled
            outcome = send()
            if outcome.cancelled:
                raise Cancelled
            log.info(
                "%s%s: %s -> %s status=%s attempt=%d/%d%s",
                hop.name,
                leg,
                event,
                url,
                outcome.status if outcome.status is not None else "none",
                attempt,
                attempts,
                f" ({outcome.detail})" if outcome.detail else "",
                extra=event_fields(event),
            )
            if outcome.ok or not outcome.retryable:
                break
        return outcome

    def _call(self, hop: Hop, event: Event, cancel: Cancel | None) -> Outcome:
        """One attempt at the subscriber, its answer read by the rules of §3 (or §5)."""
        headers, body = encode(event, structured=hop.structured)
        headers.update({"Prefer": "reply", "Kn-Namespace": hop.namespace, **_span(event)})
        outcome, response = self._send(hop.url, headers, body, hop.delivery.attempt_timeout, cancel)
        if response is None:
            if hop.behind_broker and outcome.timed_out:
                outcome.error_extensions = {}  # the MT broker loses them on this path (§4)
            return outcome
        if not outcome.ok:
            return outcome
        if is_cloudevent(response.headers):
            try:
                outcome.reply = decode(response.headers, response.content, validate=False)
            except BadEvent as e:
                if hop.behind_broker:
                    return Outcome(502, f"reply is not a valid CloudEvent: {e}")
                outcome.detail = f"unreadable reply dropped: {e}"
        elif response.content and hop.behind_broker:
            # "The response MUST be either empty or a valid CloudEvent": the broker-filter
            # answers 502 and adds no error extensions for the dead-letter sink.
            return Outcome(502, "2xx with a body that is not a CloudEvent")
        return outcome

    def _post(self, hop: Hop, url: str, event: Event, cancel: Cancel | None) -> Outcome:
        """Hand an event on (a reply, or a dead letter): binary, no `Prefer: reply`."""
        headers, body = encode(event)
        headers.update({"Kn-Namespace": hop.namespace, **_span(event)})
        return self._send(url, headers, body, hop.delivery.attempt_timeout, cancel)[0]

    def _send(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
        cancel: Cancel | None,
    ) -> tuple[Outcome, Response | None]:
        try:
            response = self.connections.post(url, headers, body, timeout, cancel)
        except SendFailed as e:
            outcome = _no_response(url, f"dispatch error: {e}", timed_out=e.timed_out)
            outcome.cancelled = e.cancelled
            return outcome, None
        extensions = {"knativeerrordest": url, "knativeerrorcode": str(response.status_code)}
        if response.content:
            encoded = base64.b64encode(response.content[:ERROR_DATA_BYTES]).decode()
            extensions["knativeerrordata"] = encoded
        ok = 200 <= response.status_code < 300
        detail = "" if ok else response.text[:120].strip()
        return Outcome(response.status_code, detail, error_extensions=extensions), response

    def _dead_letter(
        self, hop: Hop, event: Event, failure: Outcome, cancel: Cancel | None
    ) -> Waits:
        if hop.dead_letter_sink is None:
            log.error(
                "%s: %s dropped (last status %s): no deadLetterSink",
                hop.name,
                event,
                failure.status or "none",
                extra=event_fields(event),
            )
            return False
        sink = hop.dead_letter_sink
        dead = event.with_attributes(**failure.error_extensions)
        outcome = yield from self._attempts(
            hop, " dead letter", sink, dead, lambda: self._post(hop, sink, dead, cancel), cancel
        )
        if not outcome.ok:
            log.error(
                "%s: %s lost: the deadLetterSink failed too",
                hop.name,
                event,
                extra=event_fields(event),
            )
        return outcome.ok


def _span(event: Event) -> dict[str, str]:
    """The hop's `traceparent` header: a span of the event's trace, as Knative's dispatcher
    makes one per request (the event's own `traceparent` extension travels unchanged)."""
    parent = event.get(TRACEPARENT)
    return {"traceparent": child_traceparent(parent)} if parent else {}


def _no_response(url: str, detail: str, timed_out: bool = False) -> Outcome:
    encoded = base64.b64encode(detail.encode()[:ERROR_DATA_BYTES]).decode()
    extensions = {
        "knativeerrordest": url,
        "knativeerrorcode": "500",
        "knativeerrordata": encoded,
    }
    return Outcome(None, detail, error_extensions=extensions, timed_out=timed_out)
