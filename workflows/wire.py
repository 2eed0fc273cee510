"""A CloudEvent as the runner carries it between hops, and its two HTTP forms.

Knative's broker and channels decode each event and encode it again for every hop (docs/knative.md
§1), so a subscriber never sees the producer's raw request: it sees the attributes, the data and
only the pass-through headers. The runner does the same with `Event`: attributes as strings
(they crossed a channel in binary mode), `data` as bytes, and the pass-through headers beside.
"""

from __future__ import annotations

import base64
import binascii
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from imagerec.events import (
    CORE_ATTRIBUTES,
    EXTENSION_NAME,
    STRUCTURED,
    BadEvent,
    is_rfc3339,
    media_type,
    parse_event,
)
from workflows.filters import text

_PASS_THROUGH = ("x-request-id", "retry-after")
_PASS_THROUGH_PREFIXES = ("knative-", "x-b3-")
# CE HTTP binding §3.1.3.2: space, '"', '%' and non-ASCII are percent-encoded in header values.
_HEADER_SAFE = "".join(c for c in string.punctuation if c not in '"%')


@dataclass(frozen=True)
class Event:
    attributes: Mapping[str, str]
    data: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # pass-through headers only

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    def with_attributes(self, **changes: str | None) -> Event:
        """A copy with attributes set, or removed where the value is None."""
        attributes = dict(self.attributes)
        for name, value in changes.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = value
        return Event(attributes, self.data, self.headers)

    def __str__(self) -> str:
        return f"type={self.get('type')} subject={self.get('subject') or '-'} id={self.get('id')}"


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    """Knative's detection rule: a CloudEvents content type, or a `ce-specversion` header."""
    lowered = {name.lower(): value for name, value in headers.items()}
    kind = media_type(lowered.get("content-type"))
    return kind.startswith("application/cloudevents") or "ce-specversion" in lowered


def pass_through(headers: Mapping[str, str]) -> dict[str, str]:
    """The non-`ce-` headers Knative forwards (pkg/utils/headers.go); everything else is dropped."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() in _PASS_THROUGH or name.lower().startswith(_PASS_THROUGH_PREFIXES)
    }


def decode(headers: Mapping[str, str], body: bytes, validate: bool = True) -> Event:
    """The event in an HTTP message (binary or structured); BadEvent where Knative answers 400.

    `validate=False` only decodes, as the broker-filter does with a reply: an event with a blank
    `id` is then the ingress's to refuse (400), not the decoder's (502).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    kind = media_type(lowered.get("content-type"))
    if validate:
        parse_event(headers, body)  # as strict as the broker: batch, names, blank id/source/type
    elif kind != STRUCTURED and "ce-specversion" not in lowered:
        raise BadEvent("not a CloudEvent (or a batch of them)")
    if kind == STRUCTURED:
        event = _decode_structured(body, pass_through(headers))
    else:
        attributes = {
            name[3:]: unquote(value) for name, value in lowered.items() if name.startswith("ce-")
        }
        attributes.pop("datacontenttype", None)
        if lowered.get("content-type"):
            attributes["datacontenttype"] = lowered["content-type"]
        event = Event(attributes, body, pass_through(headers))
    _check_decodable(event)
    if validate:
        _check_valid(event)
    return event


# What the subscribers' server (gunicorn, under functions-framework and the web) accepts:
# a header line `name: value` + CRLF of at most 8190 bytes (limit_request_field_size) and at
# most 100 header fields (limit_request_fields). Past either it answers 400 or 431 and the event is
# lost after its retries, so the ingress refuses it at once. A few fields are left for what
# HTTP itself adds (Host, Content-Length, Prefer, Kn-Namespace, traceparent...).
MAX_HEADER_LINE = 8190
MAX_EVENT_HEADERS = 100 - 16


def check_receivable(event: Event) -> None:
    """BadEvent unless a subscriber can receive `event` in binary mode, as every hop sends it."""
    headers, _ = encode(event)
    for name, value in headers.items():
        size = len(name.encode()) + 2 + len(value.encode()) + 2
        if size > MAX_HEADER_LINE:
            attribute = name[3:] if name.lower().startswith("ce-") else name
            raise BadEvent(
                f"attribute or header {attribute!r} takes {size} bytes as an HTTP header line; "
                f"subscribers accept at most {MAX_HEADER_LINE}"
            )
    if len(headers) > MAX_EVENT_HEADERS:
        raise BadEvent(
            f"the event needs {len(headers)} HTTP headers; subscribers accept at most "
            f"{MAX_EVENT_HEADERS} besides those HTTP adds"
        )


def _check_decodable(event: Event) -> None:
    """What makes the Go SDK fail to read a message at all (a reply like this is a 502)."""
    for name in event.attributes:
        if not EXTENSION_NAME.match(name):
            raise BadEvent(f"invalid attribute name {name!r}")
    if event.get("time") is not None and not is_rfc3339(event.attributes["time"]):
        raise BadEvent(f"time is not an RFC 3339 timestamp: {event.get('time')!r}")


def _check_valid(event: Event) -> None:
    """The SDK's `Validate`, as the ingress runs it (docs/knative.md §1); after percent-decoding."""
    for name in ("id", "source", "type"):
        if not (event.get(name) or "").strip():
            raise BadEvent(f"CloudEvent attribute {name!r} is missing or blank")
    if event.get("subject") == "":
        raise BadEvent("subject, when present, must not be empty")
    schema = event.get("dataschema")
    if schema is not None and not (urlsplit(schema).scheme and urlsplit(schema).netloc):
        raise BadEvent(f"dataschema must be an absolute URI, got {schema!r}")


def _decode_structured(body: bytes, headers: dict[str, str]) -> Event:
    try:
        envelope = json.loads(body)
    except ValueError:
        raise BadEvent("structured CloudEvent body is not JSON") from None
    if not isinstance(envelope, dict):
        raise BadEvent("structured CloudEvent body must be a JSON object")
    attributes = {}
    for name, value in envelope.items():
        if name in ("data", "data_base64") or value is None:
            continue
        if name in CORE_ATTRIBUTES and not isinstance(value, str):
            raise BadEvent(f"attribute {name!r} must be a JSON string")
        if isinstance(value, dict | list):
            raise BadEvent(f"extension {name!r} must be a string, number or boolean")
        attributes[name.lower()] = text(value)
    data = b""
    if envelope.get("data_base64") is not None:
        try:
            data = base64.b64decode(envelope["data_base64"], validate=True)
        except (binascii.Error, TypeError):
            raise BadEvent("data_base64 is not base64") from None
    elif "data" in envelope:
        value = envelope["data"]
        if isinstance(value, str) and not _is_json(attributes.get("datacontenttype")):
            data = value.encode()
        else:
            data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return Event(attributes, data, headers)


def encode(event: Event, structured: bool = False) -> tuple[dict[str, str], bytes]:
    """Headers and body for one hop; binary mode unless the delivery asks for `format: json`."""
    if structured:
        return _encode_structured(event)
    headers = {
        f"ce-{name}": quote(value, safe=_HEADER_SAFE)
        for name, value in event.attributes.items()
        if name != "datacontenttype"
    }
    if event.get("datacontenttype"):
        headers["Content-Type"] = event.attributes["datacontenttype"]
    return {**event.headers, **headers}, event.data


def _encode_structured(event: Event) -> tuple[dict[str, str], bytes]:
    envelope: dict[str, object] = dict(event.attributes)
    if event.data:
        try:
            if not _is_json(event.get("datacontenttype")):
                raise ValueError("not JSON")
            envelope["data"] = json.loads(event.data)
        except ValueError:
            envelope["data_base64"] = base64.b64encode(event.data).decode()
    body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return {**event.headers, "Content-Type": f"{STRUCTURED}; charset=utf-8"}, body


def _is_json(content_type: str | None) -> bool:
    kind = media_type(content_type)
    return kind in ("", "application/json", "text/json") or kind.endswith("+json")
