"""record-failure: the dead-letter sink. An image whose event ran out of retries shows "failed".

Knative POSTs the original event here, with `knativeerrordest`, `knativeerrorcode` and
`knativeerrordata` (the failing answer, base64) when it has them, and with none of them when a
Trigger delivery timed out (docs/knative.md §4). Whatever arrives is acknowledged with an empty 202:
the dead-letter sink's reply is ignored, and refusing it would only lose the event's trace.

    functions-framework --source functions/record_failure.py --target record_failure
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from urllib.parse import urlparse

import functions_framework
from cloudevents.http import CloudEvent
from sqlalchemy.orm import Session

from imagerec.models import Image, Status
from imagerec.states import IllegalTransition, advance
from imagerec.steps import cloudevent_step, db_session

log = logging.getLogger("imagerec.record_failure")

MAX_DETAIL = 300


@functions_framework.http
@cloudevent_step
def record_failure(event: CloudEvent) -> None:
    image_id = event.get("subject")
    reason = failure_reason(event)
    if not image_id:
        log.warning("dead letter %s (%s) names no image: %s", event["id"], event["type"], reason)
        return None
    with db_session() as session, session.begin():
        image = session.get(Image, image_id)
        if image is None:
            # E.g. an outside emitter's event refused for an unknown user: nothing to mark.
            log.warning(
                "dead letter for unknown image %s (%s): %s", image_id, event["type"], reason
            )
        elif not _about(image, event):
            log.warning("dead letter %s does not match image %s: %s", event["id"], image_id, reason)
        else:
            _fail(session, image, event, reason)
    return None


def _fail(session: Session, image: Image, event: CloudEvent, reason: str) -> None:
    try:
        failed_now = advance(session, image, Status.FAILED)
    except IllegalTransition as e:
        # A finished photo stays finished: this is a stale redelivery, or only announcing
        # the outcome (dev.imagerec.image.processed) failed. Or the photo was deleted meanwhile.
        log.warning("%s; dead letter %s: %s", e, event["type"], reason)
        return
    if failed_now:
        log.warning("image %s failed: %s", image.id, reason)
        image.reason = reason


def _about(image: Image, event: CloudEvent) -> bool:
    """Whether the dead event names this image's owner, album and original.

    Every event the pipeline itself sends carries them; one that does not (unreadable data, or
    an outsider's event naming someone else's image id) must not fail the photo. The
    reconciler re-sends a photo that stays stuck.
    """
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            return False
    if not isinstance(data, dict):
        return False
    named = {
        "imageId": image.id,
        "userId": image.user_id,
        "albumId": image.album_id,
        "blobKey": image.blob_key,
    }
    return all(field in data and data[field] == value for field, value in named.items())


def failure_reason(event: CloudEvent) -> str:
    """One readable sentence from Knative's error extensions, or a fallback without them."""
    destination = event.get("knativeerrordest")
    code = _status_code(event.get("knativeerrorcode"))
    detail = _decode_body(event.get("knativeerrordata"))
    who = _step_name(destination) if destination else "a step"
    if code is None and not detail:
        if destination:
            return f"{who} did not answer successfully in time"
        return "a step did not answer in time"
    reason = f"{who} answered {code}" if code is not None else f"{who} failed"
    return f"{reason}: {detail}" if detail else reason


def _step_name(destination: str) -> str:
    """`http://extract-metadata.ns.svc.cluster.local/` -> `extract-metadata`."""
    parsed = urlparse(destination)
    host = parsed.hostname or ""
    if host and not host.replace(".", "").isdigit() and host != "localhost":
        return host.split(".", 1)[0]
    # A local runner's address says nothing about the step; keep it whole.
    return destination.rstrip("/") or "a step"


def _status_code(value: object) -> int | None:
    # Binary mode turns the integer into a header string.
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def _decode_body(value: object) -> str:
    if not value:
        return ""
    text = str(value)
    # Not base64 after all (an emitter of its own making): show it as it came.
    with contextlib.suppress(binascii.Error, ValueError):
        text = base64.b64decode(text, validate=True).decode("utf-8", errors="replace")
    first_line = (text.strip().splitlines() or [""])[0].strip()
    return first_line[:MAX_DETAIL]
