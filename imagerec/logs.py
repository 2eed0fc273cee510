"""Log lines as JSON, one object per line, and W3C Trace Context for the events.

Every service (the web, each step, the runner, the reconciler) calls `configure(service)` once;
each line then reads

    {"time": "2026-12-02T23:20:01.123Z", "level": "INFO", "service": "extract-metadata",
     "logger": "imagerec.steps", "message": "...", "imageId": "...", "ceId": "...",
     "traceId": "..."}

`imageId`, `ceId` and `traceId` appear while an event is handled (`with handling(event):`, or
`extra=event_fields(event)` on one call). The service is `K_SERVICE` (Knative sets it in every
pod; `imagerec dev` sets it for each child), else the name given; a logger can name its own
service (`name_service`), as the runner and the reconciler do inside `imagerec dev`'s process.
Each line is written with one `write()`, so processes sharing a terminal or a file never
interleave within a line.

Tracing follows https://www.w3.org/TR/trace-context/: the web starts a trace per upload
(`new_traceparent`), every event carries it as the CloudEvents `traceparent` extension (Knative
forwards extensions, and the header, hop to hop), and each step's reply gets
`child_traceparent(incoming)`: the same trace id, a new parent id. One photo is one trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import secrets
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_EVENT_FIELDS = ("imageId", "ceId", "traceId")
_event: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "imagerec_event", default=None
)


# -- trace context --------------------------------------------------------------------------


def new_traceparent() -> str:
    """The start of a new trace: version 00, a random trace id and parent id, sampled."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """The traceparent of what `parent`'s receiver sends on: same trace, a new parent id.

    An absent or invalid parent starts a new trace, as the spec tells a receiver to do.
    """
    match = _TRACEPARENT.match(parent or "")
    if not match or not _valid(match):
        return new_traceparent()
    return f"00-{match[2]}-{secrets.token_hex(8)}-{match[4]}"


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match[2] if match and _valid(match) else None


def _valid(match: re.Match[str]) -> bool:
    return match[1] != "ff" and set(match[2]) != {"0"} and set(match[3]) != {"0"}


# -- what a log line says about the event it is about ----------------------------------------


def event_fields(event: Any) -> dict[str, str]:
    """imageId (the subject), ceId and traceId of a CloudEvent or of an attribute mapping."""
    get = event.get
    fields = {"imageId": get("subject"), "ceId": get("id"), "traceId": trace_id(get(TRACEPARENT))}
    return {name: value for name, value in fields.items() if value}


@contextlib.contextmanager
def handling(event: Any) -> Iterator[None]:
    """Every line logged in this block (in this thread or task) names `event`."""
    token = _event.set(event_fields(event))
    try:
        yield
    finally:
        _event.reset(token)


# -- formatting and output ------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": getattr(record, "service", None) or self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_event.get() or {})
        for name in _EVENT_FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(line, ensure_ascii=False, default=str)


class LineHandler(logging.Handler):
    """Writes each formatted record and its newline with one os.write() on a file descriptor."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode(errors="replace")
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)


def service_name(default: str) -> str:
    return os.environ.get("K_SERVICE") or default


def configure(service: str, level: int = logging.INFO, fd: int | None = None) -> None:
    """JSON lines on `fd` (stderr by default) for the whole process, named `service`.

    A process whose logging is already set up (a test run) keeps it, with one change: lines are
    formatted as JSON there too.
    """
    service = service_name(service)
    root = logging.getLogger()
    formatter = JsonFormatter(service)
    if not root.handlers:
        handler = LineHandler(sys.stderr.fileno() if fd is None else fd)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level)
    # Alembic announces each of its plugins at INFO when first imported: noise in every process.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class _NamedService(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "service", None):
            record.service = self.service
        return True


def name_service(logger: logging.Logger, service: str) -> logging.Logger:
    """Lines of `logger` name `service` rather than the process's (several in one process)."""
    logger.addFilter(_NamedService(service))
    return logger
