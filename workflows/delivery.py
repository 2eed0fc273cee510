"""One hop of an event to a subscriber, with Knative's retries, replies and dead letters (§3–§5).

`Dispatcher.deliver(hop, event)` runs the whole life of one subscription's delivery:

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
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import requests

from imagerec.events import BadEvent
from workflows.manifests import Delivery
from workflows.wire import Event, decode, encode, is_cloudevent

log = logging.getLogger("workflows.runner")

RETRIED_STATUSES = frozenset({404, 408, 409, 429})
# No `timeout` anywhere: a Knative Service's own request limit (timeoutSeconds) then applies.
DEFAULT_TIMEOUT = 300.0
TTL = "knativebrokerttl"
ERROR_DATA_BYTES = 768  # base64 of 768 bytes is Knative's 1024-character limit


class Clock(Protocol):
    """Time as the runner sees it; tests inject one whose sleep returns at once."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time; `sleep` returns early once `stopping` is set, so shutdown is not held up."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class Stopped(Exception):
    """The runner is stopping: abandon the delivery."""


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

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in RETRIED_STATUSES


class Dispatcher:
    def __init__(self, clock: Clock, stopping: threading.Event) -> None:
        self.clock = clock
        self._stopping = stopping

    def deliver(self, hop: Hop, event: Event) -> None:
        # The broker-filter strips the TTL before calling the subscriber (§2).
        sent = event.with_attributes(**{TTL: None}) if hop.behind_broker else event
        outcome = self._attempts(hop, "", hop.url, sent, lambda: self._call(hop, sent))
        if not outcome.ok:
            self._dead_letter(hop, event, outcome)
            return
        if outcome.reply is None or hop.reply_to is None:
            return
        reply = outcome.reply
        if hop.behind_broker:
            reply = reply.with_attributes(**{TTL: event.get(TTL)})
        target = hop.reply_to
        forwarded = self._attempts(
            hop, " reply", target, reply, lambda: self._post(hop, target, reply)
        )
        if not forwarded.ok:
            self._dead_letter(hop, event, forwarded)

    def _attempts(
        self, hop: Hop, leg: str, url: str, event: Event, send: Callable[[], Outcome]
    ) -> Outcome:
        attempts = hop.delivery.attempts
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.clock.sleep(hop.delivery.wait_before_retry(attempt - 1))
            if self._stopping.is_set():
                raise Stopped
            outcome = send()
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
            )
            if outcome.ok or not outcome.retryable:
                break
        return outcome

    def _call(self, hop: Hop, event: Event) -> Outcome:
        """One attempt at the subscriber, its answer read by the rules of §3 (or §5)."""
        headers, body = encode(event, structured=hop.structured)
        headers.update({"Prefer": "reply", "Kn-Namespace": hop.namespace})
        outcome, response = self._send(hop.url, headers, body, hop.delivery.timeout)
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

    def _post(self, hop: Hop, url: str, event: Event) -> Outcome:
        """Hand an event on (a reply, or a dead letter): binary, no `Prefer: reply`."""
        headers, body = encode(event)
        headers["Kn-Namespace"] = hop.namespace
        return self._send(url, headers, body, hop.delivery.timeout)[0]

    def _send(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float | None
    ) -> tuple[Outcome, requests.Response | None]:
        try:
            response = requests.post(
                url, data=body, headers=headers, timeout=timeout or DEFAULT_TIMEOUT
            )
        except requests.Timeout:
            detail = f"dispatch error: no answer within {timeout or DEFAULT_TIMEOUT}s"
            return _no_response(url, detail, timed_out=True), None
        except requests.RequestException as e:
            return _no_response(url, f"dispatch error: {e}"), None
        extensions = {"knativeerrordest": url, "knativeerrorcode": str(response.status_code)}
        if response.content:
            encoded = base64.b64encode(response.content[:ERROR_DATA_BYTES]).decode()
            extensions["knativeerrordata"] = encoded
        ok = 200 <= response.status_code < 300
        detail = "" if ok else response.text[:120].strip()
        return Outcome(response.status_code, detail, error_extensions=extensions), response

    def _dead_letter(self, hop: Hop, event: Event, failure: Outcome) -> None:
        if hop.dead_letter_sink is None:
            log.error(
                "%s: %s dropped (last status %s): no deadLetterSink",
                hop.name,
                event,
                failure.status or "none",
            )
            return
        sink = hop.dead_letter_sink
        dead = event.with_attributes(**failure.error_extensions)
        outcome = self._attempts(
            hop, " dead letter", sink, dead, lambda: self._post(hop, sink, dead)
        )
        if not outcome.ok:
            log.error("%s: %s lost: the deadLetterSink failed too", hop.name, event)


def _no_response(url: str, detail: str, timed_out: bool = False) -> Outcome:
    encoded = base64.b64encode(detail.encode()[:ERROR_DATA_BYTES]).decode()
    extensions = {
        "knativeerrordest": url,
        "knativeerrorcode": "500",
        "knativeerrordata": encoded,
    }
    return Outcome(None, detail, error_extensions=extensions, timed_out=timed_out)
