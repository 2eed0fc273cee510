"""record-failure, the dead-letter sink: whatever Knative sends (docs/knative.md §4) is acknowledged
with an empty 202, and a known image shows "failed" with a readable reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from conftest import IMAGES
from pipeline import event_for, make_owner, post_event, put_original, step_app

from imagerec.events import ACCEPTED, PROCESSED, UPLOADED, encode
from imagerec.images import register_upload
from imagerec.models import Image, Status

EXTRACT_METADATA = "http://extract-metadata.imagerec.svc.cluster.local"


@pytest.fixture(scope="module")
def client():
    return step_app("record_failure").test_client()


@pytest.fixture
def upload(configured) -> dict[str, Any]:
    user_id, album_id = make_owner(configured)
    data = put_original(configured, IMAGES / "objects" / "dog.jpg", user_id, album_id)
    with configured.session() as session:
        register_upload(session, data, configured.blobs())
        session.commit()
    return data


def dead_letter(data: Any, subject: str | None, event_type: str = UPLOADED, **errors) -> CloudEvent:
    """The original event as Knative's dispatcher hands it to the dead-letter sink."""
    attributes = {
        "type": event_type,
        "source": "/web",
        "datacontenttype": "application/json",
        "knativearrivaltime": "2026-11-25T06:00:00Z",
        **errors,
    }
    if subject is not None:
        attributes["subject"] = subject
    return CloudEvent(attributes, data)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def status_of(backend, image_id: str) -> tuple[str, str | None]:
    with backend.session() as session:
        image = session.get(Image, image_id)
        return image.status, image.reason


def assert_acknowledged(response) -> None:
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_data() == b""
    assert not any(h.lower().startswith("ce-") for h, _ in response.headers.items())


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_failed_step_marks_the_image_failed_with_its_answer(
    client, configured, upload, structured
):
    event = dead_letter(
        upload,
        upload["imageId"],
        knativeerrordest=EXTRACT_METADATA,
        knativeerrorcode=503,
        knativeerrordata=b64("unavailable, retry later: blob store unreachable"),
    )

    assert_acknowledged(post_event(client, event, structured=structured))

    assert status_of(configured, upload["imageId"]) == (
        Status.FAILED,
        "extract-metadata answered 503: unavailable, retry later: blob store unreachable",
    )


def test_a_timed_out_delivery_without_extensions_is_still_recorded(client, configured, upload):
    """The MT broker dead-letters a timed-out Trigger delivery with no knativeerror* at all."""
    assert_acknowledged(post_event(client, dead_letter(upload, upload["imageId"])))

    assert status_of(configured, upload["imageId"]) == (
        Status.FAILED,
        "a step did not answer in time",
    )


def test_a_connection_error_and_a_local_runner_address(client, configured, upload):
    event = dead_letter(
        upload,
        upload["imageId"],
        event_type=ACCEPTED,
        knativeerrordest="http://127.0.0.1:8093/",
        knativeerrorcode="500",
        knativeerrordata=b64("dispatch error: connection refused\ngoroutine trace..."),
    )

    assert_acknowledged(post_event(client, event))

    status, reason = status_of(configured, upload["imageId"])
    assert status == Status.FAILED
    assert reason == "http://127.0.0.1:8093 answered 500: dispatch error: connection refused"


@pytest.mark.parametrize(
    "data",
    ["not even JSON {", "[" * 100_000, '{"imageId": "the id alone"}'],
    ids=["not-json", "nested-too-deep", "names-no-owner"],
)
def test_a_dead_letter_that_names_no_owner_is_acknowledged_and_only_logged(
    client, configured, upload, data
):
    # E.g. an outsider's event carrying someone else's image id as its subject.
    event = dead_letter(data, upload["imageId"], knativeerrorcode=400, knativeerrordata="plain")
    event["datacontenttype"] = "text/plain"

    assert_acknowledged(post_event(client, event))

    assert status_of(configured, upload["imageId"]) == (Status.UPLOADED, None)


def test_an_unknown_image_is_acknowledged_and_nothing_stored(client, configured):
    event = dead_letter({"imageId": "nobody"}, "nobody", knativeerrorcode=422)

    assert_acknowledged(post_event(client, event))

    with configured.session() as session:
        assert session.get(Image, "nobody") is None


def test_an_event_without_a_subject_is_acknowledged(client, configured):
    assert_acknowledged(post_event(client, dead_letter({}, None)))


def test_a_lost_processed_event_does_not_hide_a_finished_photo(client, configured, upload):
    with configured.session() as session:
        session.get(Image, upload["imageId"]).status = Status.DONE
        session.commit()
    processed = {"imageId": upload["imageId"], "status": "done"}

    event = dead_letter(processed, upload["imageId"], event_type=PROCESSED, knativeerrorcode=500)
    assert_acknowledged(post_event(client, event))

    assert status_of(configured, upload["imageId"]) == (Status.DONE, None)


@pytest.mark.parametrize("finished", [Status.DONE, Status.REJECTED, Status.FAILED])
def test_a_stale_dead_letter_leaves_a_finished_photo_as_it_is(client, configured, upload, finished):
    with configured.session() as session:
        image = session.get(Image, upload["imageId"])
        image.status, image.reason = finished, "as it was"
        session.commit()

    event = dead_letter(upload, upload["imageId"], knativeerrorcode=503, knativeerrordata=b64("x"))
    assert_acknowledged(post_event(client, event))

    assert status_of(configured, upload["imageId"]) == (finished, "as it was")


@pytest.mark.parametrize("field", ["userId", "albumId", "blobKey"])
def test_a_dead_letter_naming_another_owner_does_not_touch_the_image(
    client, configured, upload, field
):
    forged = {**upload, field: 424242 if field != "blobKey" else "9/9/forged.jpg"}
    event = dead_letter(forged, upload["imageId"], knativeerrorcode=422, knativeerrordata=b64("x"))

    assert_acknowledged(post_event(client, event))

    assert status_of(configured, upload["imageId"]) == (Status.UPLOADED, None)


def test_the_same_dead_letter_twice_is_harmless(client, configured, upload):
    event = event_for(upload)
    event["knativeerrorcode"] = 504
    for _ in range(2):
        assert_acknowledged(post_event(client, event))
    assert status_of(configured, upload["imageId"]) == (Status.FAILED, "a step answered 504")


def test_a_malformed_request_is_still_refused(client, configured):
    headers, body = encode(dead_letter({}, "x"))
    del headers["ce-id"]
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 400
    response = client.post("/", data=json.dumps({"hello": 1}), content_type="application/json")
    assert response.status_code == 400
