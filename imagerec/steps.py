"""What every workflow step shares: its resources, made once per process, and the HTTP
contract with Knative (docs: https://knative.dev/docs/eventing/event-delivery/).

A step is a function `CloudEvent -> CloudEvent | None`; `cloudevent_step` turns it into a
functions-framework HTTP entry point that answers
  200 + the reply CloudEvent (binary mode)  -> Knative forwards it (Broker or next step)
  202, empty                                -> done, nothing to forward
  400 short text                            -> malformed event or key: not retried, dead-lettered
  401 short text                            -> with knative/overlays/oidc: no token, or one the step
                                               must not believe (imagerec.senders); nothing read
  422 short text                            -> refers to something that does not exist, or
                                               disagrees with the stored row, or asks for a
                                               status change the photo may not make (done ->
                                               rejected): not retried, and logged
  503 short text                            -> a store is unreachable: Knative retries with backoff
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import flask
import sqlalchemy.exc
from cloudevents.http import CloudEvent
from sqlalchemy.orm import Session

from imagerec import logs, senders
from imagerec.blobstore import (
    BlobNotFound,
    BlobStore,
    BlobStoreUnavailable,
    InvalidBlobKey,
    open_blob_store,
)
from imagerec.config import Settings, load_settings
from imagerec.db import session_factory
from imagerec.events import BadEvent, encode, parse_event
from imagerec.images import UnknownOwner
from imagerec.states import IllegalTransition

log = logging.getLogger("imagerec.steps")

# Knative copies a failing body into knativeerrordata, base64, into a 1024-byte buffer;
# over 768 bytes Knative's dispatcher panics. Stay well under.
MAX_ERROR_BODY = 700


class Refused(Exception):
    """The event names a user, album, image or blob that does not exist: not retryable."""


class Unavailable(Exception):
    """A dependency (model, store) is not ready: worth retrying later."""


@functools.cache
def settings() -> Settings:
    return load_settings()


def blob_store() -> BlobStore:
    return open_blob_store(settings().blob_url)


def db_session() -> Session:
    return session_factory(settings().database_url)()


Step = Callable[[CloudEvent], CloudEvent | None]


def cloudevent_step(
    step: Step, ready: Callable[[], bool | dict] = lambda: True
) -> Callable[[flask.Request], flask.typing.ResponseReturnValue]:
    """`ready` answers GET (the readiness probe): a step that is not ready answers 503; a
    ready one 200, with `ready`'s dict as JSON when it returns one."""
    # functions-framework configures no logging; without this a step's INFO lines (one per
    # event) vanish. JSON lines named after the step (K_SERVICE on a cluster).
    logs.configure(step.__name__.replace("_", "-"))
    # Read once, at start-up: a misconfigured check stops the step instead of admitting anyone.
    sender_check = senders.sender_check()

    @functools.wraps(step)
    def entry_point(request: flask.Request) -> flask.typing.ResponseReturnValue:
        if request.method == "GET":
            state = ready()
            if not state:
                return _plain(503, "not ready")
            # A step may say more about how it runs (the detector: its thread settings).
            return (state, 200) if isinstance(state, dict) else _plain(200, "ready")
        # Every delivery is a POST; the readiness probe above carries no token and touches no data.
        if sender_check is not None:
            try:
                sender = sender_check.sender_of(request.headers.get("Authorization"))
            except senders.Unauthenticated as e:
                log.warning("%s: refused: %s", step.__name__, e)
                return _plain(401, f"unauthenticated: {e}")
            except senders.KeysUnavailable as e:
                log.warning("%s: transient failure: %s", step.__name__, e)
                return _plain(503, f"unavailable, retry later: {e}")
            log.debug("%s: delivery from %s", step.__name__, sender)
        if request.method != "POST":
            return _plain(405, "POST a CloudEvent")
        try:
            event = parse_event(request.headers, request.get_data())
        except BadEvent as e:
            log.warning("%s: refused: bad event: %s", step.__name__, e)
            return _plain(400, f"bad event: {e}")
        with logs.handling(event):
            return _handle(step, event)

    return entry_point


def _handle(step: Step, event: CloudEvent) -> flask.typing.ResponseReturnValue:
    log.info("%s: %s %s", step.__name__, event["type"], event.get("subject"))
    try:
        reply = step(event)
    except (BadEvent, InvalidBlobKey) as e:
        log.warning("%s: refused: bad event: %s", step.__name__, e)
        return _plain(400, f"bad event: {e}")
    except (Refused, UnknownOwner, IllegalTransition, BlobNotFound) as e:
        # Also how a forged event shows: the log keeps who sent it.
        log.warning("%s refused %s from %s: %s", step.__name__, event["id"], event["source"], e)
        return _plain(422, f"refused: {_describe(e)}")
    except (
        Unavailable,
        BlobStoreUnavailable,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
    ) as e:
        log.warning("%s: transient failure: %s", step.__name__, e)
        return _plain(503, f"unavailable, retry later: {_describe(e)}")
    except Exception as e:  # the step's own bug: still answer briefly, Knative retries
        log.exception("%s failed", step.__name__)
        return _plain(500, f"internal error in {step.__name__}: {type(e).__name__}")
    if reply is None:
        return "", 202
    # The reply continues the event's trace: one photo is one trace (imagerec/logs.py).
    reply[logs.TRACEPARENT] = logs.child_traceparent(event.get(logs.TRACEPARENT))
    headers, body = encode(reply)
    return body, 200, headers


def _describe(error: Exception) -> str:
    if isinstance(error, BlobNotFound):
        return f"no blob under key {error.args[0]!r}"
    return (str(error).splitlines() or [type(error).__name__])[0]


def _plain(status: int, message: str) -> tuple[str, int, dict[str, str]]:
    body = message.encode()[:MAX_ERROR_BODY].decode(errors="ignore")
    return body, status, {"Content-Type": "text/plain; charset=utf-8"}
