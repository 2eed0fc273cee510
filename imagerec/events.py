"""The one module that knows the CloudEvents wire format and imagerec's event types.

Parsing is as strict as Knative's broker, not as lenient as the Python SDK:
anything the broker would refuse is refused here too, as `BadEvent`, which HTTP maps to 400.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import cloudevents.exceptions
import jsonschema
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

if TYPE_CHECKING:
    import requests

from imagerec import jsontext
from imagerec.logs import TRACEPARENT, new_traceparent

UPLOADED = "dev.imagerec.image.uploaded"
ACCEPTED = "dev.imagerec.image.accepted"
REJECTED = "dev.imagerec.image.rejected"
PROCESSED = "dev.imagerec.image.processed"
# Only inside the Sequence, never at the Broker: accepted + thumbnailKey, then + detections.
THUMBNAILED = "dev.imagerec.image.thumbnailed"
LABELLED = "dev.imagerec.image.labelled"
IMAGE_EVENT_TYPES = (UPLOADED, ACCEPTED, REJECTED, PROCESSED, THUMBNAILED, LABELLED)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
EXTENSION_NAME = re.compile(r"^[a-z0-9]+$")
# The attributes the CloudEvents spec defines (all strings on the wire); any other is an extension.
CORE_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
    }
)


class BadEvent(ValueError):
    """The request is not a valid imagerec CloudEvent; retrying cannot help."""


def retried(status: int | None) -> bool:
    """Whether Knative retries a delivery that got this answer (None: no answer at all)."""
    return status is None or status >= 500 or status in (404, 408, 409, 429)


class EmitFailed(RuntimeError):
    """The sink did not take the event; `status` is its answer (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def sink_down(self) -> bool:
        """Whether any event would fail now, not just this one (Knative's retry set)."""
        return retried(self.status)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_event(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Decode one CloudEvent from an HTTP request in binary or structured mode."""
    headers = {k.lower(): v for k, v in headers.items()}
    kind = media_type(headers.get("content-type"))
    if kind == BATCH:
        raise BadEvent("batched CloudEvents are not accepted")
    if kind != STRUCTURED and "ce-specversion" not in headers:
        raise BadEvent("not a CloudEvent: no ce-specversion header and not structured mode")
    if kind == STRUCTURED:
        try:
            envelope = jsontext.loads(body or b"null")
        except jsontext.BadJson as e:
            raise BadEvent(f"structured CloudEvent body: {e}") from None
        if not isinstance(envelope, dict):
            raise BadEvent("structured CloudEvent body must be a JSON object")
        for name in CORE_ATTRIBUTES & set(envelope):
            if envelope[name] is not None and not isinstance(envelope[name], str):
                raise BadEvent(f"attribute {name!r} must be a JSON string")
        names = set(envelope) - CORE_ATTRIBUTES - {"data", "data_base64"}
    else:
        names = {h[3:] for h in headers if h.startswith("ce-")} - CORE_ATTRIBUTES
    for name in names:
        if not EXTENSION_NAME.match(name):
            raise BadEvent(f"invalid extension attribute name {name!r}: use [a-z0-9] only")
    # Checked before from_http, which fills in `time` = now when the event has none.
    sent_time = envelope.get("time") if kind == STRUCTURED else headers.get("ce-time")
    if sent_time is not None and not is_rfc3339(sent_time):
        raise BadEvent(f"time is not an RFC 3339 timestamp: {sent_time!r}")
    try:
        event = from_http(headers, body)
    except cloudevents.exceptions.GenericException as e:
        raise BadEvent(f"malformed CloudEvent: {_first_line(e)}") from None
    except RecursionError:
        raise BadEvent("CloudEvent data is nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise BadEvent(f"malformed CloudEvent data: {_first_line(e)}") from None
    if isinstance(event.data, dict | list):
        try:
            jsontext.check(event.data)
        except jsontext.BadJson as e:
            raise BadEvent(f"CloudEvent data: {e}") from None
    for attribute in ("id", "source", "type"):
        if not str(event.get(attribute) or "").strip():
            raise BadEvent(f"CloudEvent attribute {attribute!r} is missing or blank")
    if event.get("specversion") not in ("1.0", "0.3"):
        raise BadEvent(f"unsupported specversion {event.get('specversion')!r}")
    return event


def is_rfc3339(value: str) -> bool:
    """A timestamp as CloudEvents' `time` needs it: date, 'T', time, and an offset or Z."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return moment.tzinfo is not None and "T" in value.upper()


def event_data(event: CloudEvent) -> dict[str, Any]:
    """The event's JSON data, checked against the published schema of its type."""
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = jsontext.loads(data or "null")
        except jsontext.BadJson as e:
            raise BadEvent(f"event data: {e}") from None
    if not isinstance(data, dict):
        raise BadEvent("event data must be a JSON object")
    schema = event_schema(event["type"]) if event["type"] in IMAGE_EVENT_TYPES else None
    if schema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(data)
        )
        if error is not None:
            raise BadEvent(f"invalid {event['type']} data {_schema_error(error)}"[:500])
        if event.get("subject") != data["imageId"]:
            raise BadEvent("CloudEvent subject must be the image id (data.imageId)")
    return data


def _schema_error(error: jsonschema.exceptions.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "data"
    if error.validator == "pattern" and isinstance(error.instance, str):
        # The text patterns refuse controls, line separators and bidi overrides (which can
        # make "photo\u202egpj.exe" show as "photoexe.jpg"): name the character, not the regex.
        pattern = error.validator_value
        hidden = next(
            (c for c in error.instance if not c.isprintable() and not re.search(pattern, c)), None
        )
        if hidden is not None:
            return (
                f"at {where}: {where} holds U+{ord(hidden):04X}, a control, line-separator "
                "or bidirectional formatting character, which event text may not hold"
            )
    return f"at {where}: {error.message}"


@cache
def event_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema published for an event type (imagerec/schemas/<type>.json)."""
    text = resources.files("imagerec.schemas").joinpath(f"{event_type}.json").read_text()
    return json.loads(text)


def new_event(
    event_type: str, source: str, data: dict[str, Any], subject: str | None = None
) -> CloudEvent:
    attributes = {"type": event_type, "source": source, "datacontenttype": "application/json"}
    if subject is not None:
        attributes["subject"] = subject
    return CloudEvent(attributes, data)


def encode(event: CloudEvent, structured: bool = False) -> tuple[dict[str, str], bytes]:
    headers, body = to_structured(event) if structured else to_binary(event)
    return dict(headers), body if isinstance(body, bytes) else str(body).encode()


@cache
def _sink_session() -> requests.Session:
    """One keep-alive connection pool per process for every send to the sink: a new TCP
    connection per event cost more than the send itself. Made on the first send, with requests
    imported then: the steps only reply, and importing it costs each of them about 0.1 s."""
    import requests

    return requests.Session()


# Where a SinkBinding mounts its subject's token when Knative Eventing's OIDC authentication is
# on (knative/eventing pkg/apis/sources/v1/sinkbinding_lifecycle.go: volume `oidc-token` at
# /oidc, Secret key `token`, renewed before it expires). The Broker then answers 401 to a POST
# without it (docs/knative.md §14; knative/overlays/oidc).
OIDC_TOKEN_FILE = "/oidc/token"


def oidc_authorization(path: str | None = None) -> dict[str, str]:
    """The Authorization header for the sink, if Eventing gave this process a token.

    Read on every send: Eventing replaces the token before it expires.
    """
    try:
        with open(path or os.environ.get("IMAGEREC_OIDC_TOKEN_FILE", OIDC_TOKEN_FILE)) as file:
            token = file.read().strip()
    except OSError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


def emit(event: CloudEvent, sink: str, timeout: float = 10.0) -> None:
    """POST an event to a sink (the Broker, as K_SINK names it).

    An event that carries no `traceparent` starts a trace here (imagerec/logs.py).
    """
    if event.get(TRACEPARENT) is None:
        event[TRACEPARENT] = new_traceparent()
    headers, body = encode(event)
    headers.update(oidc_authorization())
    import requests

    try:
        response = _sink_session().post(sink, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise EmitFailed(f"could not reach {sink}: {e}") from e
    if not 200 <= response.status_code < 300:
        raise EmitFailed(
            f"{sink} answered {response.status_code}: {response.text[:200]}", response.status_code
        )


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:300]
