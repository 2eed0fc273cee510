"""JSON log lines and W3C trace context (imagerec/logs.py)."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from imagerec import logs
from imagerec.events import new_event

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


@pytest.fixture
def lines(tmp_path):
    """A logger writing JSON lines to a file, as a service's does; returns (logger, read)."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    handler = logs.LineHandler(fd)
    handler.setFormatter(logs.JsonFormatter("svc"))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, lambda: [json.loads(line) for line in path.read_text().splitlines()]
    finally:
        logger.removeHandler(handler)
        os.close(fd)


def test_each_line_is_one_json_object_with_time_level_service_and_message(lines):
    logger, read = lines
    logger.info("two\nlines of %s", "text")
    [line] = read()
    assert line["message"] == "two\nlines of text"
    assert (line["level"], line["service"], line["logger"]) == ("INFO", "svc", "tests.logs")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert "imageId" not in line


def test_lines_written_while_handling_an_event_name_it(lines):
    logger, read = lines
    event = new_event("t", "/tests", {}, subject="img-7")
    event[logs.TRACEPARENT] = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    with logs.handling(event):
        logger.warning("inside")
    logger.info("outside")
    inside, outside = read()
    assert (inside["imageId"], inside["ceId"], inside["traceId"]) == (
        "img-7",
        event["id"],
        "a" * 32,
    )
    assert "imageId" not in outside


def test_extra_fields_and_a_named_service_and_exceptions(lines):
    logger, read = lines
    logs.name_service(logger, "runner")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra=logs.event_fields({"subject": "img-1", "id": "e1"}))
    [line] = read()
    assert (line["service"], line["imageId"], line["ceId"]) == ("runner", "img-1", "e1")
    assert "ValueError: boom" in line["exception"]
    logger.filters.clear()


def test_a_child_traceparent_keeps_the_trace_and_takes_a_new_parent_id():
    parent = logs.new_traceparent()
    child = logs.child_traceparent(parent)
    assert TRACEPARENT.match(parent) and TRACEPARENT.match(child)
    assert logs.trace_id(child) == logs.trace_id(parent)
    assert child.split("-")[2] != parent.split("-")[2]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
    ],
)
def test_an_absent_or_invalid_traceparent_starts_a_new_trace(bad):
    child = logs.child_traceparent(bad)
    assert TRACEPARENT.match(child)
    assert logs.trace_id(bad) is None


def test_a_steps_reply_continues_the_trace_of_the_event_it_got():
    import flask

    from imagerec.events import encode, parse_event
    from imagerec.steps import cloudevent_step

    def echo(event):
        return new_event("t.reply", "/functions/echo", {}, subject=event.get("subject"))

    app = flask.Flask(__name__)
    entry_point = cloudevent_step(echo)  # functions-framework calls it with the request
    app.add_url_rule("/", "step", lambda: entry_point(flask.request), methods=["POST"])
    event = new_event("t", "/tests", {}, subject="img-1")
    event[logs.TRACEPARENT] = parent = logs.new_traceparent()
    headers, body = encode(event)
    response = app.test_client().post("/", data=body, headers=headers)
    assert response.status_code == 200
    reply = parse_event(dict(response.headers), response.get_data())
    assert logs.trace_id(reply[logs.TRACEPARENT]) == logs.trace_id(parent)
    assert reply[logs.TRACEPARENT] != parent


def test_emit_starts_a_trace_for_an_event_without_one(tmp_path):
    from imagerec.events import emit
    from tests.recording_sink import RecordingSink

    sink = RecordingSink()
    try:
        event = new_event("t", "/web", {}, subject="img-1")
        emit(event, sink.url)
        [received] = sink.events
    finally:
        sink.close()
    assert logs.trace_id(received[logs.TRACEPARENT])
    assert received[logs.TRACEPARENT] == event[logs.TRACEPARENT]
