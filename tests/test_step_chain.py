"""The workflow's steps chained over HTTP with real CloudEvents, as Knative's Trigger and
Sequence chain them: extract-metadata -> make-thumbnail -> detect-objects -> store-results,
and extract-metadata -> (rejected) -> store-results for a bad file. On both backends."""

from __future__ import annotations

from typing import Any

import pipeline
import pytest
import requests
from cloudevents.http import CloudEvent
from conftest import IMAGES, MODEL, ROOT, manifest
from pipeline import (
    event_for,
    make_owner,
    post_event,
    put_original,
    reply_event,
    running_step,
    step_app,
)

import imagerec.steps
from imagerec.events import (
    ACCEPTED,
    LABELLED,
    PROCESSED,
    REJECTED,
    THUMBNAILED,
    UPLOADED,
    encode,
    parse_event,
)
from imagerec.images import register_upload
from workflows.manifests import load_manifests

# Which step's function each event type is delivered to (knative/: Triggers and the Sequence).
PIPELINE = load_manifests(ROOT / "knative")
ROUTE = {t: PIPELINE.steps[name].function for t, (name,) in PIPELINE.routes().items()}
STEPS = tuple(dict.fromkeys(ROUTE.values()))
DOG = next(e for e in manifest()["objects"] if e["file"] == "objects/dog.jpg")
BAD = next(e for e in manifest()["bad"] if e["file"] == "bad/text_named.jpg")


@pytest.fixture(scope="module")
def clients() -> dict[str, Any]:
    # One app per step for the whole module: detect-objects loads the model once.
    return {step: step_app(step).test_client() for step in STEPS}


def run_chain(clients: dict[str, Any], data: dict[str, Any], structured: bool) -> list[CloudEvent]:
    """Deliver the uploaded event, then each reply to the step it is routed to, until the
    processed event; returns every event that crossed, in order."""
    events = [event_for(data, UPLOADED, source="/web")]
    while events[-1]["type"] != PROCESSED:
        step = ROUTE[events[-1]["type"]]
        events.append(reply_event(post_event(clients[step], events[-1], structured=structured)))
    return events


def dump(backend: Any, image_id: str) -> dict[str, Any]:
    """The rows of an image, but for when the row was last touched: a re-run touches it."""
    return {
        key: value for key, value in pipeline.dump(backend, image_id).items() if key != "updated_at"
    }


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_photo_goes_through_the_whole_chain(clients, configured, structured):
    owner = make_owner(configured)
    data = put_original(configured, IMAGES / DOG["file"], *owner)

    events = run_chain(clients, data, structured)

    assert [e["type"] for e in events] == [UPLOADED, ACCEPTED, THUMBNAILED, LABELLED, PROCESSED]
    assert all(e["subject"] == data["imageId"] for e in events)
    assert events[-1].data == {"imageId": data["imageId"], "status": "done"}
    labelled = events[3].data
    row = dump(configured, data["imageId"])
    assert (row["status"], row["reason"]) == ("done", None)
    make, model = DOG["exif_make_model"]
    assert (row["exif_make"], row["exif_model"]) == (make, model)
    assert (row["width"], row["height"]) == (DOG["pixel_width"], DOG["pixel_height"])
    assert (row["file_size"], row["content_hash"]) == (DOG["bytes"], DOG["sha256"])
    assert (row["format"], row["orientation"]) == (
        DOG["format_by_content"],
        DOG["exif_orientation"],
    )
    assert row["latitude"] is None and row["lat_degrees"] is None  # the manifest: no GPS
    assert row["creation_time"] == labelled["metadata"]["creationTime"]
    assert row["thumbnail_key"] == labelled["thumbnailKey"]
    assert configured.blobs().exists(row["thumbnail_key"])
    assert row["model"] == str(MODEL)
    stored = [
        {"label": d["label"], "score": d["score"], "box": [d[f"box_{s}"] for s in BOX]}
        for d in row["detections"]
    ]
    assert sorted(stored, key=str) == sorted(labelled["detections"], key=str)
    assert row["labels"] == labelled["labels"]
    found = {label["label"].lower() for label in row["labels"]}
    for thing in DOG["visible_objects"]:
        if thing["prominent"]:
            assert {thing["coco"], thing["openimages"].lower()} & found, thing


BOX = ("ymin", "xmin", "ymax", "xmax")


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_bad_file_ends_rejected_with_its_reason(clients, configured, structured):
    owner = make_owner(configured)
    data = put_original(configured, IMAGES / BAD["file"], *owner)

    events = run_chain(clients, data, structured)

    assert [e["type"] for e in events] == [UPLOADED, REJECTED, PROCESSED]
    assert events[-1].data == {"imageId": data["imageId"], "status": "rejected"}
    row = dump(configured, data["imageId"])
    assert (row["status"], row["reason"]) == ("rejected", events[1].data["reason"])
    assert row["reason"]
    assert row["detections"] == [] and row["thumbnail_key"] is None


@pytest.mark.parametrize("photo", [DOG, BAD], ids=["photo", "bad-file"])
def test_running_the_chain_twice_leaves_identical_rows(clients, configured, photo):
    owner = make_owner(configured)
    data = put_original(configured, IMAGES / photo["file"], *owner)
    run_chain(clients, data, structured=False)
    first = dump(configured, data["imageId"])

    run_chain(clients, data, structured=True)

    assert dump(configured, data["imageId"]) == first


def test_each_step_serves_alone_under_the_functions_framework_command(
    embedded_backend, monkeypatch
):
    """detect-objects, store-results and record-failure started as their containers start
    them, one process each, and chained over real HTTP."""
    env = {**embedded_backend.env, "IMAGEREC_DETECTOR_MODEL": str(MODEL)}
    owner = make_owner(embedded_backend)
    data = put_original(embedded_backend, IMAGES / DOG["file"], *owner)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    in_process = {
        step: step_app(step).test_client() for step in ("extract_metadata", "make_thumbnail")
    }
    accepted = reply_event(post_event(in_process["extract_metadata"], event_for(data)))
    thumbnailed = reply_event(post_event(in_process["make_thumbnail"], accepted))
    imagerec.steps.settings.cache_clear()

    with (
        running_step("detect_objects", env) as detect_objects,
        running_step("store_results", env) as store_results,
        running_step("record_failure", env) as record_failure,
    ):
        labelled = post(detect_objects, thumbnailed)
        assert labelled["type"] == LABELLED
        assert "Dog" in {label["label"] for label in labelled.data["labels"]}
        processed = post(store_results, labelled, structured=True)
        assert processed.data == {"imageId": data["imageId"], "status": "done"}
        # A second photo whose uploaded event ran out of retries (no error extensions).
        stuck = put_original(embedded_backend, IMAGES / BAD["file"], *owner)
        with embedded_backend.session() as session:
            register_upload(session, stuck, embedded_backend.blobs())
            session.commit()
        headers, body = encode(event_for(stuck, UPLOADED))
        response = requests.post(record_failure, data=body, headers=headers, timeout=30)
        assert (response.status_code, response.content) == (202, b"")

    row = dump(embedded_backend, data["imageId"])
    assert (row["status"], row["reason"]) == ("done", None)
    assert len(row["detections"]) == len(labelled.data["detections"])
    failed = dump(embedded_backend, stuck["imageId"])
    assert (failed["status"], failed["reason"]) == ("failed", "a step did not answer in time")


def post(url: str, event: CloudEvent, structured: bool = False) -> CloudEvent:
    headers, body = encode(event, structured=structured)
    response = requests.post(url, data=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return parse_event(dict(response.headers), response.content)


@pytest.mark.parametrize("down", ["IMAGEREC_BLOB_URL", "IMAGEREC_DATABASE_URL"])
def test_an_unreachable_store_is_a_503_so_knative_retries(
    clients, embedded_backend, monkeypatch, down
):
    owner = make_owner(embedded_backend)
    data = put_original(embedded_backend, IMAGES / DOG["file"], *owner)
    unreachable = {
        "IMAGEREC_BLOB_URL": "redis://127.0.0.1:1/0",
        "IMAGEREC_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
    }
    for key, value in {**embedded_backend.env, down: unreachable[down]}.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    try:
        response = post_event(clients["extract_metadata"], event_for(data))
    finally:
        imagerec.steps.settings.cache_clear()

    assert response.status_code == 503
    assert response.get_data(as_text=True).startswith("unavailable, retry later")
