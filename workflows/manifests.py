"""Read the routing out of Knative manifests: Brokers, Triggers, Sequences, Parallels.

`load_manifests(folder)` reads the YAML files the folder's kustomization.yaml lists under
`resources:` (every `*.yaml`/`*.yml` when there is none), all documents of each file, and keeps
the kinds that route events. Everything else (Services, StatefulSets, Secrets, SinkBindings...)
is skipped, except that Knative Services are remembered with what they reply with and, for the
pipeline's steps, the function each runs (`Manifests.steps`, `Manifests.routes()`: the one list of
steps every other part derives from). The kustomization's `namespace:`
overrides each document's own, as kustomize does; patches and generators are not applied.

What the API server's webhooks would reject is refused here with `ManifestError`, naming the file
and the object: a `filters` entry with two dialects, a bad `backoffPolicy` or duration, a
Destination with neither `ref` nor `uri`, a relative `uri` alone, a field the Knative Go type does
not have (`delivery.timout`, `deliverY`: Eventing's webhook refuses unknown fields,
docs/knative.md §9, where the runner would otherwise silently drop the setting)... The semantics
followed are those of docs/knative.md (§3 Trigger, §4 delivery, §5 Sequence, §6 Parallel).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from workflows import filters

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class ManifestError(ValueError):
    """A manifest the local runner cannot route, as Knative's webhooks would refuse it."""


@dataclass(frozen=True)
class Ref:
    kind: str
    name: str
    namespace: str
    api_version: str = ""


@dataclass(frozen=True)
class Destination:
    """Where events go: a referenced object's address, optionally with a relative `uri` on it."""

    ref: Ref | None = None
    uri: str | None = None

    def __str__(self) -> str:
        if self.ref is None:
            return str(self.uri)
        where = f"{self.ref.kind.lower()} {self.ref.name}"
        return f"{where}{self.uri}" if self.uri else where


@dataclass(frozen=True)
class Delivery:
    """A `delivery` block. Fields left out in the manifest stay None (which matters, §4)."""

    retry: int | None = None
    backoff_policy: str | None = None
    backoff_delay: float | None = None  # seconds
    timeout: float | None = None  # seconds, per attempt
    dead_letter_sink: Destination | None = None
    format: str | None = None  # "json" (structured) or "binary"

    @property
    def attempts(self) -> int:
        return 1 + (self.retry or 0)

    @property
    def attempt_timeout(self) -> float:
        """Seconds one attempt may take: `timeout`, else the subscriber's own request limit."""
        return self.timeout or DEFAULT_ATTEMPT_TIMEOUT

    def wait_before_retry(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1 = the first retry), as Knative does."""
        if self.backoff_policy is None or self.backoff_delay is None:
            return 0.0
        if self.backoff_policy == "exponential":
            return self.backoff_delay * 2 ** (retry_number - 1)
        return self.backoff_delay * (retry_number - 1)


# A hop without `timeout` is bounded by its Knative Service's request limit (timeoutSeconds,
# 300 by default).
DEFAULT_ATTEMPT_TIMEOUT = 300.0
# config-br-defaults: applied to a Broker only when its whole `delivery` is absent.
BROKER_DEFAULT_DELIVERY = Delivery(retry=10, backoff_policy="exponential", backoff_delay=0.2)


@dataclass(frozen=True)
class Broker:
    namespace: str
    name: str
    delivery: Delivery | None = None
    # Whether its ingress answers 202 before delivering (see broker_is_asynchronous).
    asynchronous: bool = False


@dataclass(frozen=True)
class Trigger:
    namespace: str
    name: str
    broker: str
    subscriber: Destination
    matches: Callable[[Mapping[str, str]], bool] = field(compare=False, repr=False)
    filter_text: str = "everything"
    delivery: Delivery | None = None


@dataclass(frozen=True)
class Step:
    destination: Destination
    delivery: Delivery | None = None


@dataclass(frozen=True)
class Sequence:
    namespace: str
    name: str
    steps: tuple[Step, ...]
    channel_delivery: Delivery | None = None
    reply: Destination | None = None
    channel_kind: str = "InMemoryChannel"  # the channelTemplate's

    def channel(self, index: int) -> str:
        return f"{self.name}-kn-sequence-{index}"


@dataclass(frozen=True)
class Branch:
    subscriber: Destination
    filter: Destination | None = None
    reply: Destination | None = None
    delivery: Delivery | None = None


@dataclass(frozen=True)
class Parallel:
    namespace: str
    name: str
    branches: tuple[Branch, ...]
    channel_delivery: Delivery | None = None
    reply: Destination | None = None
    channel_kind: str = "InMemoryChannel"

    @property
    def ingress_channel(self) -> str:
        return f"{self.name}-kn-parallel"

    def branch_channel(self, index: int) -> str:
        return f"{self.name}-kn-parallel-{index}"


@dataclass(frozen=True)
class Channel:
    """A channel declared in the manifests: a Sequence or Parallel adopts one of its template's
    kind and name instead of making it (pkg/reconciler/sequence/sequence.go reconcileChannel),
    with its annotations and its own delivery."""

    namespace: str
    name: str
    kind: str
    delivery: Delivery | None = None
    asynchronous: bool = False


@dataclass(frozen=True)
class KnativeService:
    """A Knative Service: the event types it replies with (`imagerec.dev/emits`) and, for a step
    (labelled `app.kubernetes.io/component: step`), the function its container runs under
    functions-framework (`--target`: the entry point of functions/<function>.py)."""

    namespace: str
    name: str
    emits: frozenset[str] = frozenset()
    function: str | None = None  # None: not a step (the web service)


Key = tuple[str, str]  # (namespace, name)


@dataclass
class Manifests:
    brokers: dict[Key, Broker] = field(default_factory=dict)
    triggers: dict[Key, Trigger] = field(default_factory=dict)
    sequences: dict[Key, Sequence] = field(default_factory=dict)
    parallels: dict[Key, Parallel] = field(default_factory=dict)
    services: dict[Key, KnativeService] = field(default_factory=dict)
    channels: dict[Key, Channel] = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, KnativeService]:
        """The pipeline's steps by Service name, in the order the manifests list them."""
        return {s.name: s for s in self.services.values() if s.function is not None}

    def routes(self) -> dict[str, tuple[str, ...]]:
        """The steps each event type is delivered to, by Service name, for the types Services emit.

        Through every Trigger whose filter passes an event of that type (to a Service, or to a
        Sequence's first step), and within a Sequence from each step to the next: what a step
        emits is what the next one receives. A type no step receives is left out.
        """
        emitted = dict.fromkeys(t for s in self.services.values() for t in sorted(s.emits))
        received: list[tuple[str, Destination]] = []
        for trigger in self.triggers.values():
            ref = trigger.subscriber.ref
            flow = self.sequences.get((ref.namespace, ref.name)) if ref else None
            first = flow.steps[0].destination if flow and ref.kind == "Sequence" else None
            received += [
                (t, first or trigger.subscriber) for t in emitted if trigger.matches({"type": t})
            ]
        for sequence in self.sequences.values():
            for before, after in pairwise(sequence.steps):
                replier = self._step(before.destination)
                if replier is not None:
                    received += [(t, after.destination) for t in sorted(replier.emits)]
        routes: dict[str, tuple[str, ...]] = {}
        for event_type, destination in received:
            step = self._step(destination)
            if step is not None and step.name not in routes.get(event_type, ()):
                routes[event_type] = (*routes.get(event_type, ()), step.name)
        return routes

    def _step(self, destination: Destination) -> KnativeService | None:
        ref = destination.ref
        return self.steps.get(ref.name) if ref is not None and ref.kind == "Service" else None

    def channel_mode(
        self, namespace: str, name: str, template_kind: str, template_delivery: Delivery | None
    ) -> tuple[bool, Delivery | None]:
        """Whether the flow's channel `name` is asynchronous, and its delivery: the declared
        channel's when one of the template's kind exists (adopted), else the template's."""
        declared = self.channels.get((namespace, name))
        if declared is not None and declared.kind == template_kind:
            return declared.asynchronous, declared.delivery
        return channel_is_asynchronous(template_kind), template_delivery

    def destinations(self) -> Iterator[tuple[str, Destination]]:
        """Every Destination the manifests name, with the object that names it."""
        for trigger in self.triggers.values():
            yield f"trigger {trigger.name}", trigger.subscriber
        for broker in self.brokers.values():
            yield from _delivery_destinations(f"broker {broker.name}", broker.delivery)
        for trigger in self.triggers.values():
            yield from _delivery_destinations(f"trigger {trigger.name}", trigger.delivery)
        for sequence in self.sequences.values():
            owner = f"sequence {sequence.name}"
            for step in sequence.steps:
                yield owner, step.destination
                yield from _delivery_destinations(owner, step.delivery)
            yield from _delivery_destinations(owner, sequence.channel_delivery)
            if sequence.reply is not None:
                yield owner, sequence.reply
        for parallel in self.parallels.values():
            owner = f"parallel {parallel.name}"
            for branch in parallel.branches:
                yield owner, branch.subscriber
                for extra in (branch.filter, branch.reply):
                    if extra is not None:
                        yield owner, extra
                yield from _delivery_destinations(owner, branch.delivery)
            yield from _delivery_destinations(owner, parallel.channel_delivery)
            if parallel.reply is not None:
                yield owner, parallel.reply


# -- the delivery in force on a hop (§4) ------------------------------------------------------


def trigger_delivery(trigger: Trigger, broker: Broker) -> Delivery:
    """What a Trigger's deliveries get: its own `delivery` replaces the Broker's (or, when the
    Broker has none, config-br-defaults) as a whole; only the dead-letter sink falls back."""
    return _in_force(trigger.delivery, broker.delivery or BROKER_DEFAULT_DELIVERY)


def subscription_delivery(own: Delivery | None, channel: Delivery | None) -> Delivery:
    """What a channel's subscriber (a Sequence step, a Parallel branch or filter) gets: its own
    `delivery` replaces the channel's as a whole (neither: one attempt, no dead-letter sink);
    only the dead-letter sink falls back."""
    return _in_force(own, channel or Delivery())


def _in_force(own: Delivery | None, fallback: Delivery) -> Delivery:
    chosen = fallback if own is None else own
    return replace(chosen, dead_letter_sink=chosen.dead_letter_sink or fallback.dead_letter_sink)


def _delivery_destinations(
    owner: str, delivery: Delivery | None
) -> Iterator[tuple[str, Destination]]:
    if delivery is not None and delivery.dead_letter_sink is not None:
        yield f"{owner} (deadLetterSink)", delivery.dead_letter_sink


def load_manifests(folder: Path) -> Manifests:
    """The routing objects of every manifest under `folder` (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder of manifests")
    manifests = Manifests()
    for path, namespace_override in _manifest_files(folder, None):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML: {e}") from None
        for document in documents:
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ManifestError(f"{path}: a document is not a mapping")
            try:
                _add(manifests, document, namespace_override)
            except ManifestError as e:
                raise ManifestError(f"{path}: {e}") from None
    for trigger in manifests.triggers.values():
        if (trigger.namespace, trigger.broker) not in manifests.brokers:
            raise ManifestError(
                f"trigger {trigger.name}: broker {trigger.namespace}/{trigger.broker} "
                "is not defined in the manifests"
            )
    return manifests


def _manifest_files(folder: Path, namespace: str | None) -> Iterator[tuple[Path, str | None]]:
    kustomization = next(
        (folder / name for name in KUSTOMIZATION_NAMES if (folder / name).is_file()), None
    )
    if kustomization is None:
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            yield path, namespace
        return
    spec = yaml.safe_load(kustomization.read_text()) or {}
    namespace = namespace or spec.get("namespace")  # an outer kustomization's namespace wins
    for resource in spec.get("resources") or []:
        if "://" in str(resource):
            raise ManifestError(f"{kustomization}: remote resource {resource!r} is not supported")
        path = folder / str(resource)
        if path.is_dir():
            yield from _manifest_files(path, namespace)
        elif path.is_file():
            yield path, namespace
        else:
            raise ManifestError(f"{kustomization}: resource {resource!r} does not exist")


# The fields of the Knative Go types (knative/eventing pkg/apis/..., knative.dev/pkg duck/v1).
# Eventing's webhook decodes with unknown fields disallowed, also inside the objects the CRD
# schema leaves open (docs/knative.md §9): a misspelt key is refused at apply time, so it is here
# too.
_DELIVERY_FIELDS = frozenset(
    {"deadLetterSink", "retry", "backoffPolicy", "backoffDelay", "timeout", "format"}
    | {"retryAfterMax"}  # accepted and ignored: a feature Knative ships disabled (runner.py)
)
_DESTINATION_FIELDS = frozenset({"ref", "uri", "CACerts", "audience"})
_REF_FIELDS = frozenset({"apiVersion", "kind", "name", "namespace", "group", "address"})
_BROKER_FIELDS = frozenset({"config", "delivery"})
_TRIGGER_FIELDS = frozenset({"broker", "brokerRef", "filter", "filters", "subscriber", "delivery"})
_TRIGGER_FILTER_FIELDS = frozenset({"attributes"})
_SEQUENCE_FIELDS = frozenset({"steps", "channelTemplate", "reply"})
_SEQUENCE_STEP_FIELDS = _DESTINATION_FIELDS | {"delivery"}
_PARALLEL_FIELDS = frozenset({"branches", "channelTemplate", "reply"})
_BRANCH_FIELDS = frozenset({"filter", "subscriber", "reply", "delivery"})
_CHANNEL_TEMPLATE_FIELDS = frozenset({"apiVersion", "kind", "spec"})


def _refuse_unknown_fields(raw: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise ManifestError(
            f"{where}: unknown field {', '.join(map(repr, unknown))}, which Knative refuses "
            f"(known: {', '.join(sorted(known))})"
        )


_ROUTED = {
    ("eventing.knative.dev", "Broker"),
    ("eventing.knative.dev", "Trigger"),
    ("flows.knative.dev", "Sequence"),
    ("flows.knative.dev", "Parallel"),
    ("serving.knative.dev", "Service"),
    ("messaging.knative.dev", "InMemoryChannel"),
    ("messaging.knative.dev", "KafkaChannel"),
}


def _add(manifests: Manifests, document: dict[str, Any], namespace_override: str | None) -> None:
    group = str(document.get("apiVersion", "")).split("/", 1)[0]
    kind = document.get("kind")
    if (group, kind) not in _ROUTED:
        return
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise ManifestError(f"a {kind} has no metadata.name")
    namespace = namespace_override or metadata.get("namespace") or "default"
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestError(f"{kind} {namespace}/{name}: spec must be a mapping")
    key = (namespace, name)
    where = f"{kind} {namespace}/{name}"
    table: dict[Key, Any] = {
        "Broker": manifests.brokers,
        "Trigger": manifests.triggers,
        "Sequence": manifests.sequences,
        "Parallel": manifests.parallels,
        "Service": manifests.services,
        "InMemoryChannel": manifests.channels,
        "KafkaChannel": manifests.channels,
    }[kind]
    if key in table:
        raise ManifestError(f"{where} is defined twice")
    try:
        table[key] = _BUILDERS[kind](namespace, name, spec)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ManifestError(f"{where}: metadata.annotations must be a mapping")
    if kind == "Broker":
        table[key] = replace(table[key], asynchronous=broker_is_asynchronous(annotations))
    elif kind == "Service":
        labels = metadata.get("labels") or {}
        step = isinstance(labels, dict) and labels.get(COMPONENT) == STEP_COMPONENT
        table[key] = replace(
            table[key],
            emits=frozenset(str(annotations.get(EMITS) or "").split()),
            function=_function(spec, where) if step else None,
        )
    elif kind == "InMemoryChannel":
        table[key] = replace(table[key], asynchronous=_go_true(annotations.get(ASYNC_HANDLER)))


COMPONENT = "app.kubernetes.io/component"
STEP_COMPONENT = "step"
EMITS = "imagerec.dev/emits"
BROKER_CLASS = "eventing.knative.dev/broker.class"
CHANNEL_BASED = "MTChannelBasedBroker"
ASYNC_HANDLER = "messaging.knative.dev/async-handler"
IN_MEMORY_CHANNEL = "InMemoryChannel"


def broker_is_asynchronous(annotations: Mapping[str, Any]) -> bool:
    """Whether a Broker's ingress answers 202 before its Triggers are served.

    The channel-based broker (the default class) hands each event to its channel, an
    InMemoryChannel, which fans out synchronously unless it carries
    `messaging.knative.dev/async-handler` (parsed as Go's strconv.ParseBool: anything else is
    false); the Broker copies its `messaging.knative.dev/*` annotations onto that channel
    (knative/eventing pkg/reconciler/broker/broker.go). Another class (the Kafka broker)
    persists the event first and answers at once.
    """
    if str(annotations.get(BROKER_CLASS) or CHANNEL_BASED) != CHANNEL_BASED:
        return True
    return _go_true(annotations.get(ASYNC_HANDLER))


def _go_true(value: Any) -> bool:
    """Go's strconv.ParseBool, an error counting as false (as the IMC dispatcher reads it)."""
    return str(value) in ("1", "t", "T", "TRUE", "true", "True")


def channel_is_asynchronous(kind: str | None) -> bool:
    """Whether the channels a Sequence or Parallel makes from its channelTemplate answer first.

    The template holds only apiVersion, kind and spec (knative/eventing
    pkg/apis/messaging/v1/channel_template_types.go): no annotation reaches an InMemoryChannel
    made from it, so it is synchronous, unless the manifests declare the channel themselves
    (`Manifests.channel_mode`). Any other kind (KafkaChannel) persists first.
    """
    return (kind or IN_MEMORY_CHANNEL) != IN_MEMORY_CHANNEL


def _broker(namespace: str, name: str, spec: dict[str, Any]) -> Broker:
    _refuse_unknown_fields(spec, _BROKER_FIELDS, "spec")
    return Broker(namespace, name, _delivery(spec.get("delivery"), namespace, "spec.delivery"))


def _trigger(namespace: str, name: str, spec: dict[str, Any]) -> Trigger:
    _refuse_unknown_fields(spec, _TRIGGER_FIELDS, "spec")
    # A misspelt `attributes` would otherwise leave a filter that passes everything.
    if isinstance(spec.get("filter"), dict):
        _refuse_unknown_fields(spec["filter"], _TRIGGER_FILTER_FIELDS, "spec.filter")
    broker = spec.get("broker")
    if not broker:
        raise ManifestError("spec.broker is required")
    if "subscriber" not in spec:
        raise ManifestError("spec.subscriber is required")
    try:
        matches, text = filters.trigger_filter(spec.get("filter"), spec.get("filters"))
    except ValueError as e:
        raise ManifestError(str(e)) from None
    return Trigger(
        namespace,
        name,
        broker,
        _destination(spec["subscriber"], namespace, "spec.subscriber"),
        matches,
        text,
        _delivery(spec.get("delivery"), namespace, "spec.delivery"),
    )


def _sequence(namespace: str, name: str, spec: dict[str, Any]) -> Sequence:
    _refuse_unknown_fields(spec, _SEQUENCE_FIELDS, "spec")
    raw_steps = spec.get("steps") or []
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ManifestError("spec.steps must be a non-empty list")
    steps = tuple(
        Step(
            _destination(step, namespace, f"spec.steps[{i}]", _SEQUENCE_STEP_FIELDS),
            _delivery(step.get("delivery"), namespace, f"spec.steps[{i}].delivery"),
        )
        for i, step in enumerate(raw_steps)
    )
    return Sequence(
        namespace,
        name,
        steps,
        _channel_delivery(spec, namespace),
        _optional_destination(spec.get("reply"), namespace, "spec.reply"),
        str((spec.get("channelTemplate") or {}).get("kind") or IN_MEMORY_CHANNEL),
    )


def _parallel(namespace: str, name: str, spec: dict[str, Any]) -> Parallel:
    _refuse_unknown_fields(spec, _PARALLEL_FIELDS, "spec")
    raw_branches = spec.get("branches") or []
    if not isinstance(raw_branches, list) or not raw_branches:
        raise ManifestError("spec.branches must be a non-empty list")
    for i, branch in enumerate(raw_branches):
        if not isinstance(branch, dict):
            raise ManifestError(f"spec.branches[{i}] must be a mapping")
        _refuse_unknown_fields(branch, _BRANCH_FIELDS, f"spec.branches[{i}]")
    branches = tuple(
        Branch(
            _destination(branch.get("subscriber"), namespace, f"spec.branches[{i}].subscriber"),
            _optional_destination(branch.get("filter"), namespace, f"spec.branches[{i}].filter"),
            _optional_destination(branch.get("reply"), namespace, f"spec.branches[{i}].reply"),
            _delivery(branch.get("delivery"), namespace, f"spec.branches[{i}].delivery"),
        )
        for i, branch in enumerate(raw_branches)
    )
    return Parallel(
        namespace,
        name,
        branches,
        _channel_delivery(spec, namespace),
        _optional_destination(spec.get("reply"), namespace, "spec.reply"),
        str((spec.get("channelTemplate") or {}).get("kind") or IN_MEMORY_CHANNEL),
    )


def _service(namespace: str, name: str, spec: dict[str, Any]) -> KnativeService:
    return KnativeService(namespace, name)


def _function(spec: dict[str, Any], where: str) -> str:
    """The `--target` a step's container gives functions-framework."""
    template = spec.get("template") or {}
    pod = template.get("spec") or {} if isinstance(template, dict) else {}
    containers = pod.get("containers") or [] if isinstance(pod, dict) else []
    args = [str(a) for c in containers if isinstance(c, dict) for a in c.get("args") or []]
    if "--target" not in args[:-1]:
        raise ManifestError(f"{where}: a step's container gives functions-framework no `--target`")
    return args[args.index("--target") + 1]


def _channel(kind: str) -> Callable[[str, str, dict[str, Any]], Channel]:
    def build(namespace: str, name: str, spec: dict[str, Any]) -> Channel:
        delivery = _delivery(spec.get("delivery"), namespace, "spec.delivery")
        return Channel(namespace, name, kind, delivery, asynchronous=kind != IN_MEMORY_CHANNEL)

    return build


_BUILDERS: dict[str, Callable[[str, str, dict[str, Any]], Any]] = {
    "Broker": _broker,
    "Trigger": _trigger,
    "Sequence": _sequence,
    "Parallel": _parallel,
    "Service": _service,
    "InMemoryChannel": _channel("InMemoryChannel"),
    "KafkaChannel": _channel("KafkaChannel"),
}


def _channel_delivery(spec: dict[str, Any], namespace: str) -> Delivery | None:
    template = spec.get("channelTemplate") or {}
    if not isinstance(template, dict):
        raise ManifestError("spec.channelTemplate must be a mapping")
    _refuse_unknown_fields(template, _CHANNEL_TEMPLATE_FIELDS, "spec.channelTemplate")
    # The channel's own spec is passed to the channel kind verbatim (its CRD decides the rest);
    # only its `delivery` matters here.
    channel_spec = template.get("spec") or {}
    if not isinstance(channel_spec, dict):
        raise ManifestError("spec.channelTemplate.spec must be a mapping")
    return _delivery(channel_spec.get("delivery"), namespace, "spec.channelTemplate.spec.delivery")


def _optional_destination(raw: Any, namespace: str, where: str) -> Destination | None:
    return None if raw is None else _destination(raw, namespace, where)


def _destination(
    raw: Any, namespace: str, where: str, fields: frozenset[str] = _DESTINATION_FIELDS
) -> Destination:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a Destination needs `ref` and/or `uri`")
    _refuse_unknown_fields(raw, fields, where)
    ref, uri = raw.get("ref"), raw.get("uri")
    if ref is None and not uri:
        raise ManifestError(f"{where}: a Destination needs `ref` and/or `uri`")
    if ref is None:
        parts = urlsplit(uri)
        if not (parts.scheme and parts.netloc):
            raise ManifestError(f"{where}: `uri` without `ref` must be absolute, got {uri!r}")
        return Destination(uri=uri)
    if not isinstance(ref, dict) or not ref.get("kind") or not ref.get("name"):
        raise ManifestError(f"{where}.ref needs `kind` and `name`")
    # A misspelt `namespace` would silently send events to the object's own namespace.
    _refuse_unknown_fields(ref, _REF_FIELDS, f"{where}.ref")
    if uri and urlsplit(uri).scheme:
        raise ManifestError(f"{where}: `uri` beside `ref` must be relative, got {uri!r}")
    return Destination(
        Ref(
            ref["kind"],
            ref["name"],
            ref.get("namespace") or namespace,
            ref.get("apiVersion", ""),
        ),
        uri or None,
    )


def _delivery(raw: Any, namespace: str, where: str) -> Delivery | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must be a mapping")
    # A misspelt key (`timout`, `retries`) would otherwise leave that setting at its default.
    _refuse_unknown_fields(raw, _DELIVERY_FIELDS, where)
    retry = raw.get("retry")
    if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
        raise ManifestError(f"{where}.retry must be an integer >= 0, got {retry!r}")
    policy = raw.get("backoffPolicy")
    if policy is not None and policy not in ("linear", "exponential"):
        raise ManifestError(f"{where}.backoffPolicy must be linear or exponential, got {policy!r}")
    timeout = _duration(raw.get("timeout"), f"{where}.timeout")
    if timeout is not None and timeout <= 0:
        raise ManifestError(f"{where}.timeout must be positive")
    form = raw.get("format")
    if form is not None and form not in ("json", "binary"):
        raise ManifestError(f"{where}.format must be json or binary, got {form!r}")
    sink = raw.get("deadLetterSink")
    return Delivery(
        retry=retry,
        backoff_policy=policy,
        backoff_delay=_duration(raw.get("backoffDelay"), f"{where}.backoffDelay"),
        timeout=timeout,
        dead_letter_sink=_optional_destination(sink, namespace, f"{where}.deadLetterSink"),
        format=form,
    )


_NUMBER = r"(\d+(?:[.,]\d+)?)"
_DURATION = re.compile(
    rf"^P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?$"
)
_SECONDS = (7 * 86400, 86400, 3600, 60, 1)


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as `PT0.2S`, `PT2S`, `PT1M30S`, `P1D`.

    Years and months have no fixed length, so they are refused.
    """
    match = _DURATION.match(text.strip().upper())
    if not match or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ValueError(f"not an ISO-8601 duration (like PT0.5S): {text!r}")
    return sum(
        float(value.replace(",", ".")) * unit
        for value, unit in zip(match.groups(), _SECONDS, strict=True)
        if value is not None
    )


def _duration(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    try:
        return parse_duration(str(raw))
    except ValueError as e:
        raise ManifestError(f"{where}: {e}") from None


# -- how long Knative may keep working on one event -------------------------------------------

STUCK_MARGIN = 60.0


def leg_budget(delivery: Delivery) -> float:
    """The longest one leg of a hop can take: every attempt timing out, and every backoff."""
    waits = sum(delivery.wait_before_retry(k) for k in range(1, delivery.attempts))
    return delivery.attempts * delivery.attempt_timeout + waits


def hop_budget(delivery: Delivery, replies: bool) -> float:
    """A hop's worst case under the delivery in force: the call, then forwarding its reply,
    then the dead letter, each with all its retries (a reply that cannot be forwarded sends the
    event to the dead-letter sink)."""
    dead_letters = delivery.dead_letter_sink is not None
    return leg_budget(delivery) * (1 + replies + dead_letters)


def retry_budget(manifests: Manifests) -> float:
    """The longest an event's work can stay in Knative's hands while it is still retried.

    Summed along the longest path an event can take from any Broker: a Trigger's hop, the steps
    of a Sequence (or the branches of a Parallel) it feeds, and, where a reply comes back to a
    Broker, the longest path on from there through Triggers not yet on the path. The reconciler
    waits at least this long (plus STUCK_MARGIN) before it sends a photo's work again.
    """
    return max(
        (_from_broker(manifests, key, frozenset()) for key in manifests.brokers), default=0.0
    )


def _from_broker(manifests: Manifests, key: Key, used: frozenset[Key]) -> float:
    broker = manifests.brokers[key]
    longest = 0.0
    for trigger_key, trigger in manifests.triggers.items():
        if (trigger.namespace, trigger.broker) != key or trigger_key in used:
            continue
        delivery = trigger_delivery(trigger, broker)
        ref = trigger.subscriber.ref
        flow = ref is not None and ref.kind in ("Sequence", "Parallel")
        # A channel answers a Trigger with no body: only a service's reply comes back.
        total = hop_budget(delivery, replies=not flow)
        path = used | {trigger_key}
        if flow:
            assert ref is not None
            inside, reply = _flow(manifests, ref.kind, (ref.namespace, ref.name))
            total += inside
            if reply is not None and reply.ref is not None and reply.ref.kind == "Broker":
                total += _from_broker(manifests, (reply.ref.namespace, reply.ref.name), path)
        else:
            total += _from_broker(manifests, key, path)
        longest = max(longest, total)
    return longest


def _flow(manifests: Manifests, kind: str, key: Key) -> tuple[float, Destination | None]:
    """A Sequence's (or Parallel's) own worst case, and where its result goes."""
    if kind == "Sequence":
        sequence = manifests.sequences[key]
        total = 0.0
        for i, step in enumerate(sequence.steps):
            _, channel_delivery = manifests.channel_mode(
                sequence.namespace,
                sequence.channel(i),
                sequence.channel_kind,
                sequence.channel_delivery,
            )
            delivery = subscription_delivery(step.delivery, channel_delivery)
            replies = i < len(sequence.steps) - 1 or sequence.reply is not None
            total += hop_budget(delivery, replies)
        return total, sequence.reply
    parallel = manifests.parallels[key]
    longest = 0.0
    for branch in parallel.branches:
        delivery = subscription_delivery(branch.delivery, parallel.channel_delivery)
        total = hop_budget(delivery, True)
        if branch.filter is not None:
            through_filter = subscription_delivery(None, parallel.channel_delivery)
            # Counted with the branch's dead-letter sink: never less than the filter hop's own
            # (the channel's), so the budget cannot fall short.
            total += hop_budget(
                replace(through_filter, dead_letter_sink=delivery.dead_letter_sink), True
            )
        longest = max(longest, total)
    return longest, parallel.reply


def stuck_threshold(manifests: Manifests) -> float:
    """Seconds after which no event of the pipeline can still be in Knative's retries."""
    return retry_budget(manifests) + STUCK_MARGIN


def untouched_threshold(manifests: Manifests, event_type: str) -> float:
    """Seconds after which no Trigger can still be delivering an event of `event_type` to its
    first subscriber: that hop's call and dead-letter legs (every attempt timing out, every
    backoff), plus STUCK_MARGIN. A subscriber that marks its work on first touch (as
    extract-metadata moves an uploaded photo to processing) leaves nothing untouched past this
    unless the event was lost."""
    longest = 0.0
    for trigger in manifests.triggers.values():
        if not trigger.matches({"type": event_type}):
            continue
        broker = manifests.brokers[(trigger.namespace, trigger.broker)]
        longest = max(longest, hop_budget(trigger_delivery(trigger, broker), replies=False))
    return longest + STUCK_MARGIN
