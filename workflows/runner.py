"""The local runner: routes CloudEvents over HTTP as Knative Eventing does, from the manifests.

    from workflows.runner import Runner

    services = {"extract-metadata": "http://127.0.0.1:8101", ...}  # every Service it routes to
    runner = Runner.from_manifests(Path("knative"), services=services,
                                   clock=None)  # injectable `now()` + `call_later()` (tests)
    server = runner.serve("127.0.0.1", 8100)    # background threads; port 0 picks a free port
    server.url         # "http://127.0.0.1:8100"
    server.broker_url  # ".../imagerec/default": the only Broker, or the one named default
    runner.wait_idle(timeout)  # until no delivery is pending; TimeoutError if it takes longer
    server.stop()

`services` maps each Knative Service (or Kubernetes Service) a Destination names to the base URL
where that step runs locally; a name the manifests use but `services` lacks is a `ManifestError`
at once, not a silent loss. Destinations resolve as in Knative: a Service ref -> its URL; a
Broker ref -> this runner's ingress `/<namespace>/<broker>`; a Sequence -> its channel 0; a
Parallel -> its ingress channel; `uri` alone -> as written; `ref` + relative `uri` -> joined.

Each broker and channel delivers as the manifests make it on a cluster (docs/local-runner.md):
- asynchronous (a Broker annotated `messaging.knative.dev/async-handler: "true"`, another
  broker class, a declared InMemoryChannel with that annotation that a Sequence adopts, a
  KafkaChannel): the ingress answers 202 as soon as the event is accepted and delivers it
  afterwards, from a pool of worker threads, so a producer never waits for (or learns about) a
  subscriber's failure;
- synchronous (an InMemoryChannel without it, which is what a Broker or a Sequence gets by
  default): the ingress answers only once every delivery has finished, retries and dead letters
  included: 202, or 500 when one failed without a dead-letter sink. A caller that closes its
  connection first cancels the fan-out: requests in flight are aborted (which cancels a
  synchronous channel below in turn), and nothing is retried, forwarded or dead-lettered.
What is pending lives in memory: a stopped runner forgets it (logging each delivery it
abandons), as a deleted in-memory channel does. A delivery waiting to retry holds no worker:
the clock calls it back when its backoff is over and it queues for the next free worker
(`workers`, 64 by default, bounds how many attempts are under way at once), so deliveries
retrying against a dead service never hold up those of a healthy one.

Not modelled: `cesql` filters (refused when loading, see filters.py), `retryAfterMax` (a feature
Knative ships disabled), TLS and OIDC on hops, kustomize patches.

Ingress (`POST /<namespace>/<broker>`, also with a trailing `/`): binary and structured events
are accepted with 202 and an empty body; a batch, a non-CloudEvent, a blank or missing
id/source/type, a bad extension name or an exhausted `knativebrokerttl` get 400; a body over
MAX_EVENT_BYTES 413, unread (channels too); an unknown broker 404; `/` 404; another path
shape 400; a method other than POST 405; OPTIONS 200 with the WebHook headers. Accepted
events get `knativearrivaltime` and `knativebrokerttl` (255, or one less than they came with)
and go to every Trigger of the broker whose filter passes (filters.py), in parallel. Channels
(`/channels/<namespace>/<channel>`) are the runner's own: one per Sequence step
(`<sequence>-kn-sequence-<i>`) and per Parallel branch, as Knative names them.

Each delivery attempt is logged as one line on the `workflows.runner` logger: hop, event type,
subject and id, destination, status and attempt number (delivery.py holds the retry, reply and
dead-letter rules).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin

from imagerec.events import BadEvent
from imagerec.logs import event_fields
from workflows.connections import Cancel
from workflows.delivery import TTL, Cancelled, Clock, Dispatcher, Hop, Stopped, Waits, WallClock
from workflows.manifests import (
    Delivery,
    Destination,
    Key,
    ManifestError,
    Manifests,
    Trigger,
    load_manifests,
    subscription_delivery,
    trigger_delivery,
)
from workflows.wire import Event, check_receivable, decode

log = logging.getLogger("workflows.runner")

MAX_TTL = 255
FANOUT_TIMEOUT = 15 * 60.0  # pkg/channel/fanout/fanout_event_handler.go defaultTimeout
CHANNELS = "channels"
_OPTIONS_HEADERS = {
    "Allow": "POST, OPTIONS",
    "WebHook-Allowed-Origin": "*",
    "WebHook-Allowed-Rate": "*",
}
_SERVICE_KINDS = ("Service",)


@dataclass
class Server:
    """A running runner: its base URL, the broker's URL, and how to stop it."""

    url: str
    broker_url: str | None
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _FanOut:
    """A synchronous channel's fan-out of one event: its caller waits until every delivery has
    finished, and cancelling it aborts them all (Knative passes the request's context down)."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._remaining = count
        self.failed = False
        self.done = threading.Event()
        self.cancel = Cancel()
        if count == 0:
            self.done.set()

    def finished(self, ok: bool) -> None:
        with self._lock:
            self._remaining -= 1
            self.failed = self.failed or not ok
            if self._remaining == 0:
                self.done.set()


@dataclass(eq=False)  # kept in a set by identity
class _Delivery:
    """One subscription's delivery of one event, between the steps a worker runs."""

    hop: Hop
    event: Event
    waits: Waits  # Dispatcher.deliver(hop, event), resumed after each wait
    fan_out: _FanOut | None = None  # a synchronous channel's, else None (runs on the pool)


class Runner:
    def __init__(
        self,
        manifests: Manifests,
        services: Mapping[str, str],
        clock: Clock | None = None,
        workers: int = 64,
        trusted_sources: Collection[str] | None = None,
    ) -> None:
        self.manifests = manifests
        self.services = dict(services)
        # The `source`s that may send to an internal channel (None: any, as in tests that post
        # their own events there); see own_sources().
        self.trusted_sources = None if trusted_sources is None else frozenset(trusted_sources)
        self._stopping = threading.Event()
        self._own_clock: WallClock | None = None
        if clock is None:
            # A clock made here is ours to close on stop; an injected one is its owner's.
            clock = self._own_clock = WallClock()
        self.clock: Clock = clock
        self._dispatcher = Dispatcher(self._stopping, self.trusted_sources)
        self._workers = workers
        self._tasks: queue.Queue[_Delivery | None] = queue.Queue()
        # Deliveries queued, running or waiting to retry (what wait_idle waits for); the last
        # are also in _waiting, so that stop() can abandon them at once. Both under _idle.
        self._pending = 0
        self._waiting: set[_Delivery] = set()
        self._idle = threading.Condition()
        self._base_url: str | None = None
        self._brokers: dict[Key, list[tuple[Trigger, Hop]]] = {}
        self._channels: dict[Key, list[Hop]] = {}
        self._asynchronous: dict[Key, bool] = {}  # per broker and per channel, from the manifests
        self._fan_outs: set[_FanOut] = set()  # the synchronous ones under way, under _idle
        self.fanout_timeout = FANOUT_TIMEOUT
        self._check_destinations()

    @classmethod
    def from_manifests(
        cls,
        folder: Path,
        services: Mapping[str, str],
        clock: Clock | None = None,
        workers: int = 64,
        trusted_sources: Collection[str] | None = None,
    ) -> Runner:
        return cls(load_manifests(folder), services, clock, workers, trusted_sources)

    # -- lifecycle ---------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Server:
        """Start the ingress and the delivery workers in background threads."""
        if self._base_url is not None:
            raise RuntimeError("this runner is already serving")
        handler = type("Handler", (_Handler,), {"runner": self})
        httpd = _HTTPServer((host, port), handler)
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        shown = f"[{shown}]" if ":" in shown else shown
        self._base_url = f"http://{shown}:{httpd.server_address[1]}"
        self._wire()
        threads = [
            threading.Thread(
                target=httpd.serve_forever, args=(0.02,), name="runner-ingress", daemon=True
            )
        ]
        threads += [
            threading.Thread(target=self._work, name=f"runner-worker-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for thread in threads:
            thread.start()

        def stop() -> None:
            with self._idle:
                if self._stopping.is_set():
                    return
                self._stopping.set()
                waiting, self._waiting = self._waiting, set()
                fan_outs = list(self._fan_outs)
            for fan_out in fan_outs:
                fan_out.cancel.cancel()
            httpd.shutdown()
            httpd.server_close()
            self._dispatcher.connections.close()
            # Not under _idle: the timer thread may be in a callback that needs it.
            if self._own_clock is not None:
                self._own_clock.close()
            for delivery in waiting:
                self._abandon(delivery)
            # Queued deliveries come before these and are abandoned (logged) by the workers.
            for _ in range(self._workers):
                self._tasks.put(None)

        log.info("runner listening on %s", self._base_url)
        for line in self.describe():
            log.info("  %s", line)
        return Server(self._base_url, self._default_broker_url(), stop)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no delivery is queued or running; TimeoutError after `timeout` seconds."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(f"{self._pending} delivery(ies) still pending after {timeout}s")

    def asynchronous(self, namespace: str, name: str) -> bool:
        """Whether this broker or channel answers before delivering (from the manifests)."""
        return self._asynchronous[(namespace, name)]

    def broker_url(self, namespace: str, name: str) -> str:
        return self._require_base() + _broker_path(namespace, name)

    def describe(self) -> list[str]:
        """The routing table in words, one line per Trigger, Sequence and Parallel."""
        lines = []
        for (namespace, name), asynchronous in self._asynchronous.items():
            mode = "asynchronous" if asynchronous else "synchronous (answers after delivering)"
            lines.append(f"{namespace}/{name}: {mode}")
        for trigger in self.manifests.triggers.values():
            lines.append(
                f"trigger {trigger.name}: broker {trigger.broker} [{trigger.filter_text}] "
                f"-> {trigger.subscriber}"
            )
        for sequence in self.manifests.sequences.values():
            steps = " -> ".join(str(step.destination) for step in sequence.steps)
            lines.append(f"sequence {sequence.name}: {steps} -> {sequence.reply or 'discard'}")
        for parallel in self.manifests.parallels.values():
            branches = ", ".join(str(branch.subscriber) for branch in parallel.branches)
            lines.append(f"parallel {parallel.name}: [{branches}] -> {parallel.reply or 'discard'}")
        return lines

    # -- routing -----------------------------------------------------------------------------

    def resolve(self, destination: Destination, own_url: str | None = None) -> str:
        """A Destination's URL, as Knative's addressable resolver computes it (§3).

        Brokers, Sequences and Parallels resolve to this runner's own address (`own_url`,
        by default where it serves).
        """
        if destination.ref is None:
            return str(destination.uri)
        ref = destination.ref
        key = (ref.namespace, ref.name)
        if ref.kind in _SERVICE_KINDS:
            if ref.name not in self.services:
                raise ManifestError(f"no local URL for service {ref.name!r}")
            base = self.services[ref.name]
        elif ref.kind == "Broker" and key in self.manifests.brokers:
            base = (own_url or self._require_base()) + _broker_path(*key)
        elif ref.kind == "Sequence" and key in self.manifests.sequences:
            channel = self.manifests.sequences[key].channel(0)
            base = (own_url or self._require_base()) + _channel_path(ref.namespace, channel)
        elif ref.kind == "Parallel" and key in self.manifests.parallels:
            channel = self.manifests.parallels[key].ingress_channel
            base = (own_url or self._require_base()) + _channel_path(ref.namespace, channel)
        else:
            raise ManifestError(f"{ref.kind} {ref.namespace}/{ref.name} is not in the manifests")
        if destination.uri:
            return urljoin(base.rstrip("/") + "/", destination.uri.lstrip("/"))
        return base

    def _check_destinations(self) -> None:
        problems = []
        for owner, destination in self.manifests.destinations():
            try:
                self.resolve(destination, own_url="http://runner.invalid")
            except ManifestError as e:
                problems.append(f"{owner}: {e}")
        if problems:
            raise ManifestError("unresolvable destinations:\n  " + "\n  ".join(problems))

    def _wire(self) -> None:
        """Turn every subscription of the manifests into a Hop, now that our own URL is known."""
        manifests = self.manifests
        for key, broker in manifests.brokers.items():
            self._brokers[key] = []
            self._asynchronous[key] = broker.asynchronous
        for trigger in manifests.triggers.values():
            broker = manifests.brokers[(trigger.namespace, trigger.broker)]
            delivery = trigger_delivery(trigger, broker)
            hop = Hop(
                name=f"trigger {trigger.name}",
                url=self.resolve(trigger.subscriber),
                namespace=trigger.namespace,
                delivery=delivery,
                dead_letter_sink=self._dead_letter_sink(delivery),
                reply_to=self.broker_url(broker.namespace, broker.name),
                behind_broker=True,
            )
            self._brokers[(broker.namespace, broker.name)].append((trigger, hop))
        for sequence in manifests.sequences.values():
            ns, last = sequence.namespace, len(sequence.steps) - 1
            for i, step in enumerate(sequence.steps):
                if i < last:
                    reply_to = self._channel_url(ns, sequence.channel(i + 1))
                else:
                    reply_to = self.resolve(sequence.reply) if sequence.reply else None
                channel = sequence.channel(i)
                asynchronous, channel_delivery = manifests.channel_mode(
                    ns, channel, sequence.channel_kind, sequence.channel_delivery
                )
                self._asynchronous[(ns, channel)] = asynchronous
                self._channels[(ns, channel)] = [
                    self._channel_hop(
                        f"sequence {sequence.name} step {i}",
                        ns,
                        step.destination,
                        step.delivery,
                        channel_delivery,
                        reply_to,
                    )
                ]
        for parallel in manifests.parallels.values():
            ns = parallel.namespace
            ingress: list[Hop] = []
            for i, branch in enumerate(parallel.branches):
                reply = branch.reply or parallel.reply
                asynchronous, channel_delivery = manifests.channel_mode(
                    ns, parallel.branch_channel(i), parallel.channel_kind, parallel.channel_delivery
                )
                subscriber = self._channel_hop(
                    f"parallel {parallel.name} branch {i}",
                    ns,
                    branch.subscriber,
                    branch.delivery,
                    channel_delivery,
                    self.resolve(reply) if reply else None,
                )
                self._channels[(ns, parallel.branch_channel(i))] = [subscriber]
                self._asynchronous[(ns, parallel.branch_channel(i))] = asynchronous
                if branch.filter is None:
                    ingress.append(subscriber)
                    continue
                # The filter's returned event is what enters the branch; it has only the
                # channel's delivery (§6).
                ingress.append(
                    self._channel_hop(
                        f"parallel {parallel.name} filter {i}",
                        ns,
                        branch.filter,
                        None,
                        parallel.channel_delivery,
                        self._channel_url(ns, parallel.branch_channel(i)),
                    )
                )
            self._channels[(ns, parallel.ingress_channel)] = ingress
            self._asynchronous[(ns, parallel.ingress_channel)] = manifests.channel_mode(
                ns, parallel.ingress_channel, parallel.channel_kind, parallel.channel_delivery
            )[0]

    def _channel_hop(
        self,
        name: str,
        namespace: str,
        destination: Destination,
        own: Delivery | None,
        channel: Delivery | None,
        reply_to: str | None,
    ) -> Hop:
        delivery = subscription_delivery(own, channel)
        return Hop(
            name=name,
            url=self.resolve(destination),
            namespace=namespace,
            delivery=delivery,
            dead_letter_sink=self._dead_letter_sink(delivery),
            reply_to=reply_to,
        )

    def _dead_letter_sink(self, delivery: Delivery) -> str | None:
        sink = delivery.dead_letter_sink
        return None if sink is None else self.resolve(sink)

    def _channel_url(self, namespace: str, channel: str) -> str:
        return self._require_base() + _channel_path(namespace, channel)

    def _require_base(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the runner has no address until serve() is called")
        return self._base_url

    def _default_broker_url(self) -> str | None:
        brokers = list(self.manifests.brokers)
        named_default = [key for key in brokers if key[1] == "default"]
        chosen = brokers if len(brokers) == 1 else named_default
        return self.broker_url(*chosen[0]) if chosen else None

    # -- ingress -----------------------------------------------------------------------------

    def receive(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        caller_gone: Callable[[], bool] = lambda: False,
    ) -> tuple[int, dict[str, str], str]:
        """Answer one HTTP request to the ingress or a channel: status, headers, body text.

        An asynchronous broker or channel answers 202 once the event is accepted. A synchronous
        one answers only when every delivery has finished: 202, or 500 if one failed without a
        dead-letter sink; if `caller_gone()` turns true meanwhile, the fan-out is cancelled and
        the status is 0 (nobody to answer).

        The body is empty, as Knative's, except where the runner refuses what Knative would
        take and then lose (an event no subscriber can receive, a foreign event on an
        internal hop): that answer says why in one sentence.
        """
        if method == "OPTIONS":
            return 200, dict(_OPTIONS_HEADERS), ""
        if method != "POST":
            return 405, {}, ""
        if path == "/":
            return 404, {}, ""
        segments = path[1:].removesuffix("/").split("/")
        is_channel = len(segments) == 3 and segments[0] == CHANNELS
        if not (len(segments) == 2 or is_channel) or not all(segments):
            return 400, {}, ""
        try:
            event = decode(headers, body)
        except BadEvent as e:
            log.warning("refused %s: %s", path, e)
            return 400, {}, ""
        try:
            check_receivable(event)
        except BadEvent as e:
            log.warning("refused %s: %s: %s", path, event, e, extra=event_fields(event))
            return 400, {}, f"{e}\n"
        if is_channel:
            hops = self._channels.get((segments[1], segments[2]))
            if hops is None:
                return 404, {}, ""
            if not self._trusted(event):
                message = f"source {event.get('source')!r} may not send to an internal channel"
                log.warning("refused %s: %s: %s", path, event, message, extra=event_fields(event))
                return 403, {}, message + "\n"
            return self._fan_out((segments[1], segments[2]), event, hops, caller_gone)
        key = (segments[0], segments[1])
        if key not in self._brokers:
            return 404, {}, ""
        ttl = _next_ttl(event.get(TTL))
        if ttl <= 0:
            log.warning(
                "refused %s: %s: knativebrokerttl exhausted (a reply loop?)",
                path,
                event,
                extra=event_fields(event),
            )
            return 400, {}, ""
        arrival = self.clock.now().isoformat().replace("+00:00", "Z")
        event = event.with_attributes(knativearrivaltime=arrival, **{TTL: str(ttl)})
        triggered = [hop for trigger, hop in self._brokers[key] if _passes(trigger, event)]
        return self._fan_out(key, event, triggered, caller_gone)

    def _trusted(self, event: Event) -> bool:
        return self.trusted_sources is None or event.get("source") in self.trusted_sources

    def _fan_out(
        self, key: Key, event: Event, hops: list[Hop], caller_gone: Callable[[], bool]
    ) -> tuple[int, dict[str, str], str]:
        if self._asynchronous[key]:
            for hop in hops:
                self._submit(_Delivery(hop, event, self._dispatcher.deliver(hop, event)))
            return 202, {}, ""
        fan_out = _FanOut(len(hops))
        with self._idle:
            self._fan_outs.add(fan_out)
        try:
            for hop in hops:
                waits = self._dispatcher.deliver(hop, event, fan_out.cancel)
                self._submit(_Delivery(hop, event, waits, fan_out))
            # Knative's fan-out gives up waiting after 15 minutes (and lets the deliveries go on).
            deadline = time.monotonic() + self.fanout_timeout
            while not fan_out.done.wait(0.05):
                if caller_gone() or self._stopping.is_set():
                    log.info(
                        "%s: the caller went away: fan-out cancelled",
                        event,
                        extra=event_fields(event),
                    )
                    fan_out.cancel.cancel()
                    return 0, {}, ""
                if time.monotonic() > deadline:
                    log.error("%s: fan-out timed out", event, extra=event_fields(event))
                    return 500, {}, ""
            return (500 if fan_out.failed else 202), {}, ""
        finally:
            with self._idle:
                self._fan_outs.discard(fan_out)

    # -- workers -----------------------------------------------------------------------------

    def _submit(self, delivery: _Delivery) -> None:
        with self._idle:
            stopping = self._stopping.is_set()
            if not stopping:
                self._pending += 1
        if not stopping:
            self._schedule(delivery)
        if stopping:  # no worker is left to run it
            log.warning(
                "%s: %s not delivered: the runner is stopping",
                delivery.hop.name,
                delivery.event,
                extra=event_fields(delivery.event),
            )

    def _schedule(self, delivery: _Delivery) -> None:
        """Queue a delivery's next step for a worker; a synchronous fan-out's runs on a thread of
        its own (as a goroutine in Knative): it may wait for a chain of synchronous hops below it,
        and on the bounded pool such waits could take every worker."""
        if delivery.fan_out is None:
            self._tasks.put(delivery)
        else:
            threading.Thread(target=self._step, args=(delivery,), daemon=True).start()

    def _work(self) -> None:
        while (delivery := self._tasks.get()) is not None:
            self._step(delivery)

    def _step(self, delivery: _Delivery) -> None:
        """Run a delivery's attempts up to its next wait, and leave that wait to the clock."""
        try:
            wait = next(delivery.waits)
        except StopIteration as done:
            self._finished(delivery, bool(done.value))
            return
        except Stopped:
            self._abandon(delivery)
            return
        except Cancelled:
            log.info(
                "%s: %s cancelled: its caller went away",
                delivery.hop.name,
                delivery.event,
                extra=event_fields(delivery.event),
            )
            self._finished(delivery, False)
            return
        except Exception:
            log.exception(
                "%s: %s: delivery failed unexpectedly",
                delivery.hop.name,
                delivery.event,
                extra=event_fields(delivery.event),
            )
            self._finished(delivery, False)
            return
        with self._idle:
            stopping = self._stopping.is_set()
            if not stopping:
                self._waiting.add(delivery)
        if stopping:
            self._abandon(delivery)
            return
        # Outside the lock: a fake clock calls back at once, from this thread.
        self.clock.call_later(wait, lambda: self._retry_due(delivery))

    def _retry_due(self, delivery: _Delivery) -> None:
        """The clock's callback when a wait is over: the next attempt queues for a worker."""
        with self._idle:
            if delivery in self._waiting:  # else stop() has abandoned it meanwhile
                self._waiting.remove(delivery)
            else:
                return
        self._schedule(delivery)

    def _abandon(self, delivery: _Delivery) -> None:
        delivery.waits.close()
        log.warning(
            "%s: %s abandoned: the runner is stopping",
            delivery.hop.name,
            delivery.event,
            extra=event_fields(delivery.event),
        )
        self._finished(delivery, False)

    def _finished(self, delivery: _Delivery, ok: bool) -> None:
        if delivery.fan_out is not None:
            delivery.fan_out.finished(ok)
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()


_MAX_LINE = 4096  # a chunk-size line (with extensions) or a trailer; Go allows 4096 too
# Events carry metadata, never images: the largest one the schemas allow (imagerec/schemas,
# every string at its longest and escaped, 100 detections and labels) is under half of this
# (tests/test_runner_ingress.py builds it). 1 MiB is also what a Kafka-backed broker takes by
# default (message.max.bytes); Knative's MT broker ingress sets no limit (docs/local-runner.md).
MAX_EVENT_BYTES = 1024 * 1024
_LINGER_BYTES = 256 * 1024  # as much as Go reads of an unread body (maxPostHandlerReadBytes)


class _BadFraming(ValueError):
    """The request's body cannot be delimited: a bad Content-Length or chunk size."""


class _TooLarge(ValueError):
    """The request's body is over MAX_EVENT_BYTES: refused before (or instead of) reading it."""


def _too_large() -> str:
    return (
        f"an event is at most {MAX_EVENT_BYTES} bytes (events carry metadata; the image "
        "goes into the blob store)"
    )


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    try:
        if not text or not all(c in b"0123456789abcdefABCDEF" for c in text):
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise _BadFraming(f"bad chunk size {line[:40]!r}") from None


def own_sources(manifests: Manifests) -> frozenset[str]:
    """The `source` each Knative Service of the manifests replies with: `/functions/<name>`.

    What an EventPolicy says on a cluster (only the data plane may send to the Sequence's
    channels), the runner can only approximate by what an event says about itself: on the
    internal hops, an event from anyone else is refused with 403 (docs/local-runner.md).
    """
    return frozenset(f"/functions/{name}" for _, name in manifests.services)


def _broker_path(namespace: str, name: str) -> str:
    return f"/{namespace}/{name}"


def _channel_path(namespace: str, channel: str) -> str:
    return f"/{CHANNELS}/{namespace}/{channel}"


def _passes(trigger: Trigger, event: Event) -> bool:
    if trigger.matches(event.attributes):
        return True
    log.debug("trigger %s: %s filtered out", trigger.name, event)
    return False


def _next_ttl(incoming: str | None) -> int:
    """The TTL the ingress sets: 255 for a new event, one less than it came with (§2)."""
    try:
        return int(incoming) - 1 if incoming is not None else MAX_TTL
    except ValueError:
        return MAX_TTL


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections in a burst (the client then waits
    # a second to retry its SYN): replies from many workers arrive at once.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        log.warning("ingress: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    runner: Runner
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        try:
            body = self._read_body()
        except (_BadFraming, _TooLarge) as e:
            # Where the next request starts is unknown (or the rest is left unread): answer,
            # then close (as Go's server does).
            log.warning("ingress: refused %s: %s", self.path, e)
            self.close_connection = True
            status = 413 if isinstance(e, _TooLarge) else 400
            self._send(status, {"Connection": "close"}, f"{e}\n")
            self._linger()
            return
        status, headers, message = self.runner.receive(
            self.command, self.path, dict(self.headers), body, self._caller_gone
        )
        if status == 0:  # cancelled: the caller closed the connection
            self.close_connection = True
            return
        self._send(status, headers, message)

    def _linger(self) -> None:
        """Let the answer reach a client still sending: closing with its bytes unread would
        reset the connection, and the reset can discard the answer before it is read. So end
        our side, then read and drop a bounded amount for a moment (Go's server shuts its side and
        waits, net/http server.go closeWriteAndWait)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            dropped = 0
            while dropped < _LINGER_BYTES and (chunk := self.connection.recv(65536)):
                dropped += len(chunk)
        except OSError:
            pass

    def _caller_gone(self) -> bool:
        """Whether the client closed its end (what cancels a Go handler's request context)."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _send(self, status: int, headers: Mapping[str, str], message: str) -> None:
        content = message.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if content:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Every method reaches receive(), which answers 405 to all but POST and OPTIONS.
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while (size := _chunk_size(self.rfile.readline(_MAX_LINE))) > 0:
                total += size
                if total > MAX_EVENT_BYTES:
                    raise _TooLarge(_too_large())
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise _BadFraming("the body ended inside a chunk")
                chunks.append(chunk)
                if self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                    raise _BadFraming("a chunk is longer than its size says")
            while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""
        if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
            raise _BadFraming(f"Content-Length must be one non-negative integer, got {lengths}")
        length = int(lengths[0])
        if length > MAX_EVENT_BYTES:
            raise _TooLarge(_too_large())
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BadFraming(f"the body ended after {len(body)} of {length} bytes")
        return body

    def log_message(self, format: str, *args: object) -> None:
        log.debug("ingress: " + format, *args)
