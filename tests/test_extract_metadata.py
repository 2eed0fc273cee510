"""extract-metadata over HTTP: every shared test image ends accepted with the metadata the
manifest records, or rejected with a reason; malformed or dangling events are refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

import imagerec.steps
from imagerec.events import ACCEPTED, REJECTED, UPLOADED, event_schema
from imagerec.models import Image, Status
from tests.conftest import IMAGES, manifest
from tests.pipeline import (
    event_for,
    make_owner,
    post_event,
    put_original,
    reply_data,
    reply_event,
    running_step,
    step_app,
)

MANIFEST = manifest()
ACCEPTABLE = [e for e in MANIFEST["exif"] + MANIFEST["objects"] if e["supported_per_design"]] + [
    e for e in MANIFEST["bad"] if e["expected_per_design"].startswith("accepted")
]
UNACCEPTABLE = [e for e in MANIFEST["exif"] if not e["supported_per_design"]] + [
    e for e in MANIFEST["bad"] if not e["expected_per_design"].startswith("accepted")
]
# What a reason must name, for the manifest's format_by_content of each refused file.
REASON_NAMES = {"empty": "empty", "plain text": "text", "SVG/XML text": "SVG"}


@pytest.fixture(scope="module")
def client():
    return step_app("extract_metadata").test_client()


@pytest.fixture
def owner(configured) -> tuple[int, int]:
    return make_owner(configured)


def upload(backend, file: str, owner: tuple[int, int], **kwargs: Any) -> dict[str, Any]:
    return put_original(backend, IMAGES / file, *owner, **kwargs)


def _ids(entries: list[dict]) -> list[str]:
    return [e["file"] for e in entries]


def _expected(entry: dict) -> dict[str, Any]:
    """The manifest's facts about a file, in the shape of `metadata` (objects/ entries record
    fewer facts; bad/jpeg_named.png is a byte-for-byte copy of an exif/ file, found by hash)."""
    if "pixel_width" not in entry:
        return _expected(next(e for e in MANIFEST["exif"] if e["sha256"] == entry["sha256"]))
    if "make" in entry:
        make, model, orientation = entry["make"], entry["model"], entry["orientation"]
    else:
        make, model = entry["exif_make_model"] or (None, None)
        orientation = entry["exif_orientation"]
    expected = {
        "exifMake": make,
        "exifModel": model,
        "dimensions": {"width": entry["pixel_width"], "height": entry["pixel_height"]},
        "orientation": orientation or 1,
        "fileSize": entry["bytes"],
        "format": entry["format_by_content"].split()[0],
        "contentHash": entry["sha256"],
    }
    if "datetime_original" in entry:
        original = entry["datetime_original"]
        expected["creationTime"] = (
            None
            if original is None
            else original[:10].replace(":", "-")
            + "T"
            + original[11:]
            + entry.get("offset_time_original", "")
        )
    return expected


def _check_geo(geo: dict | None, gps: dict | None) -> None:
    if gps is None:
        assert geo is None
        return
    assert geo["lat"] == pytest.approx(gps["latitude"], abs=1e-4)
    assert geo["lon"] == pytest.approx(gps["longitude"], abs=1e-4)
    for ours, theirs in (
        (geo["latitude"], gps["latitude_dms"]),
        (geo["longitude"], gps["longitude_dms"]),
    ):
        assert ours["D"] == theirs["degrees"]
        assert ours["M"] == theirs["minutes"]
        assert ours["S"] == pytest.approx(theirs["seconds"], abs=1e-3)
        assert ours["Direction"] == theirs["ref"]


@pytest.mark.parametrize("entry", ACCEPTABLE, ids=_ids(ACCEPTABLE))
def test_supported_images_are_accepted_with_the_manifests_metadata(
    configured, client, owner, entry
):
    data = upload(configured, entry["file"], owner)
    response = post_event(client, event_for(data))

    reply = reply_event(response)
    assert reply["type"] == ACCEPTED
    assert reply["source"] == "/functions/extract-metadata"
    assert reply["subject"] == data["imageId"]
    accepted = reply.data
    metadata = accepted.pop("metadata")
    assert accepted == data  # the upload's data is carried forward unchanged
    for field, value in _expected(entry).items():
        assert metadata[field] == value, field
    _check_geo(metadata["geo"], entry.get("gps"))
    if entry.get("has_gps") is False:
        assert metadata["geo"] is None


@pytest.mark.parametrize("entry", UNACCEPTABLE, ids=_ids(UNACCEPTABLE))
def test_unsupported_and_broken_files_are_rejected_with_a_reason(configured, client, owner, entry):
    data = upload(configured, entry["file"], owner)
    response = post_event(client, event_for(data))

    reply = reply_event(response)
    assert reply["type"] == REJECTED
    rejected = reply.data
    reason = rejected.pop("reason")
    assert rejected == data
    # One human-readable sentence that says what is wrong with this file.
    assert reason[0].isupper() and reason.endswith(".") and "\n" not in reason
    assert reason.count(". ") == 0 and len(reason) < 200
    kind = entry["format_by_content"]
    assert REASON_NAMES.get(kind, kind).lower() in reason.lower()


def test_every_reply_validates_against_its_published_schema(configured, client, owner):
    import jsonschema

    for file in ("exif/iphone11_gps.heic", "exif/gps_garbage_values.jpg", "bad/valid.gif"):
        reply = reply_event(post_event(client, event_for(upload(configured, file, owner))))
        jsonschema.validate(reply.data, event_schema(reply["type"]))


def test_structured_mode_gets_the_same_answer(configured, client, owner):
    data = upload(configured, "exif/nokia_8_3_gps.jpg", owner)
    binary = reply_data(post_event(client, event_for(data)))
    structured = reply_data(post_event(client, event_for(data), structured=True))
    assert structured == binary


def test_outside_emitters_upload_is_registered_and_marked_processing(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner, content_type="image/png")
    with configured.session() as session:
        assert session.get(Image, data["imageId"]) is None

    reply_data(post_event(client, event_for(data, source="https://emitter.example/cam")))

    with configured.session() as session:
        image = session.get(Image, data["imageId"])
        assert (image.user_id, image.album_id) == owner
        assert image.blob_key == data["blobKey"]
        assert image.file_name == "canon_40d.jpg"
        assert image.status == Status.PROCESSING


def test_fields_an_emitter_adds_are_carried_forward(configured, client, owner):
    data = {**upload(configured, "bad/valid.gif", owner), "caption": "Grandma's birthday"}
    assert reply_data(post_event(client, event_for(data)))["caption"] == "Grandma's birthday"
    data = {**upload(configured, "exif/canon_40d.jpg", owner), "caption": "Grandma's birthday"}
    assert reply_data(post_event(client, event_for(data)))["caption"] == "Grandma's birthday"


def test_redelivery_gives_the_same_answer(configured, client, owner):
    data = upload(configured, "exif/samsung_s7_gps.jpg", owner)
    first = reply_data(post_event(client, event_for(data)))
    again = reply_data(post_event(client, event_for(data)))
    assert again == first


def test_a_photo_already_in_the_album_is_rejected_as_a_duplicate(configured, client, owner):
    first = upload(configured, "exif/kodak_cx7530_gps.jpg", owner)
    metadata = reply_data(post_event(client, event_for(first)))["metadata"]
    with configured.session() as session:  # what store-results records for an accepted photo
        session.get(Image, first["imageId"]).content_hash = metadata["contentHash"]
        session.commit()

    same_bytes = upload(configured, "exif/kodak_cx7530_gps.jpg", owner)
    reply = reply_event(post_event(client, event_for(same_bytes)))

    assert reply["type"] == REJECTED
    assert reply.data["reason"] == "This photo is already in the album as kodak_cx7530_gps.jpg."
    # The first photo itself, redelivered, is no duplicate of itself.
    assert reply_event(post_event(client, event_for(first)))["type"] == ACCEPTED


def test_the_same_photo_in_another_album_is_accepted(configured, client, owner):
    first = upload(configured, "exif/kodak_cx7530_gps.jpg", owner)
    metadata = reply_data(post_event(client, event_for(first)))["metadata"]
    with configured.session() as session:
        session.get(Image, first["imageId"]).content_hash = metadata["contentHash"]
        session.commit()
    other_owner = make_owner(configured)

    data = upload(configured, "exif/kodak_cx7530_gps.jpg", other_owner)
    assert reply_event(post_event(client, event_for(data)))["type"] == ACCEPTED


def test_declared_size_is_checked_before_decoding(configured, client, owner, monkeypatch, tmp_path):
    entry = next(e for e in MANIFEST["exif"] if e["file"] == "exif/orient3_imagemagick.png")
    pixels = entry["pixel_width"] * entry["pixel_height"]
    monkeypatch.setenv("IMAGEREC_MAX_IMAGE_PIXELS", str(pixels - 1))
    imagerec.steps.settings.cache_clear()
    # Half the file: decoding would find it truncated, but the size in the header comes first.
    half = tmp_path / "half.png"
    half.write_bytes((IMAGES / entry["file"]).read_bytes()[: entry["bytes"] // 2])

    reply = reply_event(post_event(client, event_for(put_original(configured, half, *owner))))

    assert reply["type"] == REJECTED
    reason = reply.data["reason"]
    assert (
        "too many pixels" in reason and f"{entry['pixel_width']}×{entry['pixel_height']}" in reason
    )


def test_a_file_over_the_upload_limit_is_rejected(configured, client, owner, monkeypatch):
    entry = next(e for e in MANIFEST["exif"] if e["file"] == "exif/nikon_d70.jpg")
    monkeypatch.setenv("IMAGEREC_MAX_UPLOAD_BYTES", str(entry["bytes"] - 1))
    imagerec.steps.settings.cache_clear()
    reply = reply_event(post_event(client, event_for(upload(configured, entry["file"], owner))))
    assert reply["type"] == REJECTED
    assert "larger than" in reply.data["reason"]


GOOD_GPS = {1: "S", 2: (33.0, 51.0, 54.5), 3: "E", 4: (151.0, 12.0, 36.0)}


@pytest.mark.parametrize(
    ("photo", "gps", "expected"),
    [
        ({0x9003: "0000:00:00 00:00:00"}, {}, {"creationTime": None}),
        ({0x9003: "2019:02:30 10:00:00"}, {}, {"creationTime": None}),
        ({0x9003: "garbage"}, {}, {"creationTime": None}),
        (
            {0x9003: "2019:02:03 10:00:00", 0x9011: "+99:00"},
            {},
            {"creationTime": "2019-02-03T10:00:00"},
        ),
        (
            {0x9003: "2019:02:03 10:00:00", 0x9011: "+05:30"},
            {},
            {"creationTime": "2019-02-03T10:00:00+05:30"},
        ),
        ({}, {**GOOD_GPS, 2: (95.0, 0.0, 0.0)}, {"geo": None}),
        ({}, {**GOOD_GPS, 4: (181.0, 0.0, 0.0)}, {"geo": None}),
        ({}, {**GOOD_GPS, 2: (33.0, 75.0, 0.0)}, {"geo": None}),
        ({}, {**GOOD_GPS, 1: "X"}, {"geo": None}),
        ({}, {k: v for k, v in GOOD_GPS.items() if k != 3}, {"geo": None}),
        ({}, {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}, {"geo": None}),
    ],
    ids=[
        "zero-date",
        "february-30",
        "not-a-date",
        "bad-offset",
        "offset",
        "latitude-over-90",
        "longitude-over-180",
        "75-minutes",
        "bad-reference",
        "no-longitude-reference",
        "null-island",
    ],
)
def test_malformed_exif_fields_are_dropped_and_the_photo_kept(
    configured, client, owner, tmp_path, photo, gps, expected
):
    path = tmp_path / "edited.jpg"
    with PILImage.open(IMAGES / "exif/canon_40d.jpg") as original:
        exif = original.getexif()
        exif.get_ifd(0x8769).update(photo)
        exif.get_ifd(0x8825).update(gps)
        original.save(path, exif=exif.tobytes())

    reply = reply_event(post_event(client, event_for(put_original(configured, path, *owner))))

    assert reply["type"] == ACCEPTED
    metadata = reply.data["metadata"]
    assert {field: metadata[field] for field in expected} == expected
    assert metadata["exifModel"] == "Canon EOS 40D"  # the rest of the EXIF is still read


def test_a_valid_position_in_edited_exif_is_read(configured, client, owner, tmp_path):
    path = tmp_path / "sydney.jpg"
    with PILImage.open(IMAGES / "exif/canon_40d.jpg") as original:
        exif = original.getexif()
        exif.get_ifd(0x8825).update(GOOD_GPS)
        original.save(path, exif=exif.tobytes())

    reply = reply_event(post_event(client, event_for(put_original(configured, path, *owner))))

    geo = reply.data["metadata"]["geo"]
    assert geo["latitude"] == {"D": 33, "M": 51, "S": 54.5, "Direction": "S"}
    assert geo["longitude"] == {"D": 151, "M": 12, "S": 36.0, "Direction": "E"}
    assert geo["lat"] == pytest.approx(-(33 + 51 / 60 + 54.5 / 3600), abs=1e-7)
    assert geo["lon"] == pytest.approx(151 + 12 / 60 + 36 / 3600, abs=1e-7)


TRUNCATABLE = ["exif/nikon_p6000_gps.jpg", "exif/exif_chunk.png", "exif/orient6.webp"]
TRUNCATABLE += ["exif/iphone11_gps.heic"]


@pytest.mark.parametrize("file", TRUNCATABLE)
def test_every_truncation_is_rejected(configured, client, owner, tmp_path, file):
    content = (IMAGES / file).read_bytes()
    for fraction in (0.1, 0.5, 0.9, 0.999):
        path = tmp_path / f"cut-{fraction}"
        path.write_bytes(content[: int(len(content) * fraction)])
        reply = reply_event(post_event(client, event_for(put_original(configured, path, *owner))))
        assert reply["type"] == REJECTED, (fraction, reply.data)


def test_corrupted_exif_never_rejects_a_good_photo(embedded_backend, monkeypatch, tmp_path):
    """Overwrite random bytes inside the EXIF segment of a good JPEG: always accepted, no 500."""
    for key, value in embedded_backend.env.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    client = step_app("extract_metadata").test_client()
    owner = make_owner(embedded_backend)
    content = bytearray((IMAGES / "exif/canon_40d.jpg").read_bytes())
    app1 = content.find(b"\xff\xe1")
    assert content[app1 + 4 : app1 + 8] == b"Exif"
    exif_start, exif_end = app1 + 10, app1 + 2 + int.from_bytes(content[app1 + 2 : app1 + 4], "big")
    rng = random.Random(20261125)
    for attempt in range(150):
        mutated = bytearray(content)
        for _ in range(rng.randint(1, 12)):
            mutated[rng.randrange(exif_start, exif_end)] = rng.randrange(256)
        path = tmp_path / f"mutant-{attempt}.jpg"
        path.write_bytes(mutated)
        response = post_event(client, event_for(put_original(embedded_backend, path, *owner)))
        assert reply_event(response)["type"] == ACCEPTED, attempt
    imagerec.steps.settings.cache_clear()


# --- refusals: answered with short plain text, never a reply event, never a 500


def _assert_refused(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    assert "ce-specversion" not in response.headers
    text = response.get_data(as_text=True)
    assert 0 < len(text) < 700 and "\n" not in text
    return text


def test_a_request_that_is_not_a_cloudevent_is_a_400(configured, client):
    text = _assert_refused(client.post("/", json={"imageId": "x"}), 400)
    assert "CloudEvent" in text


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_an_event_missing_its_id_is_a_400(configured, client, owner, structured):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    if structured:
        body = {"specversion": "1.0", "type": UPLOADED, "source": "/x", "subject": data["imageId"]}
        response = client.post(
            "/",
            data=json.dumps({**body, "data": data}),
            headers={"Content-Type": "application/cloudevents+json"},
        )
    else:
        headers = {"ce-specversion": "1.0", "ce-id": " ", "ce-source": "/x", "ce-type": UPLOADED}
        response = client.post("/", json=data, headers={**headers, "ce-subject": data["imageId"]})
    assert "'id'" in _assert_refused(response, 400)


@pytest.mark.parametrize("missing", ["blobKey", "userId", "size"])
def test_event_data_missing_a_field_is_a_400_naming_it(configured, client, owner, missing):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    del data[missing]
    assert missing in _assert_refused(post_event(client, event_for(data)), 400)


def test_subject_must_be_the_image_id(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    event = event_for(data)
    event["subject"] = "someone-else"
    assert "subject" in _assert_refused(post_event(client, event), 400)


def test_other_event_types_are_a_400(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    accepted = reply_data(post_event(client, event_for(data)))
    assert UPLOADED in _assert_refused(post_event(client, event_for(accepted, ACCEPTED)), 400)


@pytest.mark.parametrize("what", ["user", "album", "blob", "foreign album"])
def test_an_event_naming_what_does_not_exist_is_a_422_and_stores_nothing(
    configured, client, owner, what
):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    if what == "user":
        data["userId"] = owner[0] + 100
    elif what == "album":
        data["albumId"] = owner[1] + 100
    elif what == "blob":
        data["blobKey"] = data["blobKey"].replace(".jpg", "-missing.jpg")
    else:
        data["albumId"] = make_owner(configured)[1]

    _assert_refused(post_event(client, event_for(data)), 422)

    with configured.session() as session:
        assert session.scalars(select(Image)).all() == []


def test_an_event_claiming_another_users_original_is_a_422_and_stores_nothing(
    configured, client, owner
):
    victim = upload(configured, "exif/canon_40d.jpg", owner)
    intruder_user, intruder_album = make_owner(configured)
    claim = {**victim, "userId": intruder_user, "albumId": intruder_album, "imageId": "intruder1"}

    message = _assert_refused(post_event(client, event_for(claim)), 422)

    assert "<userId>/<albumId>/<imageId>.<ext>" in message
    with configured.session() as session:
        assert session.scalars(select(Image)).all() == []


def test_a_known_image_announced_under_another_key_is_a_422(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    reply_data(post_event(client, event_for(data)))
    other = upload(configured, "objects/dog.jpg", owner)

    message = _assert_refused(
        post_event(client, event_for({**data, "blobKey": other["blobKey"]})), 422
    )

    assert "another blob key" in message
    with configured.session() as session:
        assert session.get(Image, data["imageId"]).blob_key == data["blobKey"]


def test_a_redelivered_upload_leaves_a_finished_photo_finished(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    reply_data(post_event(client, event_for(data)))
    with configured.session() as session:
        session.get(Image, data["imageId"]).status = Status.DONE
        session.commit()

    assert reply_event(post_event(client, event_for(data)))["type"] == ACCEPTED

    with configured.session() as session:
        assert session.get(Image, data["imageId"]).status == Status.DONE


def test_a_stale_upload_for_a_failed_photo_is_refused_until_a_retry(configured, client, owner):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    reply_data(post_event(client, event_for(data)))
    with configured.session() as session:
        session.get(Image, data["imageId"]).status = Status.FAILED
        session.commit()

    response = post_event(client, event_for(data))

    assert response.status_code == 422  # failed -> processing only by a retry
    with configured.session() as session:
        assert session.get(Image, data["imageId"]).status == Status.FAILED


@pytest.mark.parametrize(
    "field, value",
    [
        ("userId", 2**63),
        ("albumId", 2**31),
        ("size", 10**20),
        ("blobKey", "1/1/a..b.jpg"),
        ("fileName", "nul\x00.jpg"),
        ("contentType", "image/jpeg\x00"),
    ],
)
def test_values_no_store_can_hold_are_a_400(configured, client, owner, field, value):
    data = upload(configured, "exif/canon_40d.jpg", owner)

    message = _assert_refused(post_event(client, event_for({**data, field: value})), 400)

    assert field in message


def test_deeply_nested_data_is_a_400(configured, client):
    body = b'{"specversion": "1.0", "id": "1", "source": "/t", "type": "x", "data": '
    body += b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post("/", data=body, content_type="application/cloudevents+json")
    _assert_refused(response, 400)


@pytest.mark.parametrize(
    "attributes",
    [{"time": "yesterday"}, {"time": "2026-12-02 10:00:00"}, {"id": 42}],
    ids=["time-words", "time-without-offset", "numeric-id"],
)
def test_attributes_the_broker_would_refuse_are_a_400(configured, client, owner, attributes):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    envelope = {
        "specversion": "1.0",
        "id": "e1",
        "source": "/t",
        "type": UPLOADED,
        "subject": data["imageId"],
        "datacontenttype": "application/json",
        "data": data,
        **attributes,
    }
    response = client.post(
        "/", data=json.dumps(envelope), content_type="application/cloudevents+json"
    )
    _assert_refused(response, 400)


def test_readiness_probe_answers_get(configured, client):
    assert client.get("/").status_code == 200


# --- the real command line, and a cross-check against exiftool


def test_the_functions_framework_command_serves_the_step(embedded_backend):
    import requests

    owner = make_owner(embedded_backend)
    data = put_original(embedded_backend, IMAGES / "exif/iphone6_gps.jpg", *owner)
    with running_step("extract_metadata", embedded_backend.env) as url:
        from imagerec.events import encode

        headers, body = encode(event_for(data))
        response = requests.post(url, data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == ACCEPTED
    assert response.headers["ce-source"] == "/functions/extract-metadata"
    assert json.loads(response.content)["metadata"]["exifModel"] == "iPhone 6"


EXIFTOOL_FILES = [
    "exif/kodak_cx7530_gps.jpg",
    "exif/iphone11_gps.heic",
    "exif/nokia_8_3_gps.jpg",
    "exif/orient8_portrait.jpg",
    "exif/orient3_imagemagick.png",
]


def test_metadata_agrees_with_exiftool(embedded_backend, monkeypatch):
    if shutil.which("exiftool") is None:  # `make test-setup` installs it; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("exiftool is not installed")
    for key, value in embedded_backend.env.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    client = step_app("extract_metadata").test_client()
    owner = make_owner(embedded_backend)
    tags = ["-Make", "-Model", "-Orientation", "-Composite:GPSLatitude", "-Composite:GPSLongitude"]
    paths = [str(IMAGES / f) for f in EXIFTOOL_FILES]
    found = json.loads(
        subprocess.run(
            ["exiftool", "-n", "-j", *tags, *paths], capture_output=True, check=True, text=True
        ).stdout
    )
    for facts in found:
        data = put_original(embedded_backend, Path(facts["SourceFile"]), *owner)
        metadata = reply_data(post_event(client, event_for(data)))["metadata"]
        assert metadata["exifMake"] == facts.get("Make")
        assert metadata["exifModel"] == facts.get("Model")
        assert metadata["orientation"] == facts.get("Orientation", 1)
        if "GPSLatitude" in facts:
            assert metadata["geo"]["lat"] == pytest.approx(facts["GPSLatitude"], abs=1e-6)
            assert metadata["geo"]["lon"] == pytest.approx(facts["GPSLongitude"], abs=1e-6)
        else:
            assert metadata["geo"] is None
    imagerec.steps.settings.cache_clear()


@pytest.mark.parametrize("claimed", [-1, +1, 10**9])
def test_an_emitters_size_that_is_not_the_blobs_is_a_422_and_stores_nothing(
    configured, client, owner, claimed
):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    lying = {**data, "size": data["size"] + claimed}

    message = _assert_refused(post_event(client, event_for(lying)), 422)

    assert f"says {lying['size']} bytes" in message and f"holds {data['size']}" in message
    with configured.session() as session:
        assert session.scalars(select(Image)).all() == []


@pytest.mark.parametrize("character", ["\u202e", "\u2028", "\u2066", "\u200f", "\x85"])
def test_an_emitters_file_name_with_bidi_or_line_controls_is_a_400(
    configured, client, owner, character
):
    data = upload(configured, "exif/canon_40d.jpg", owner)
    spoof = {**data, "fileName": f"photo{character}gpj.exe"}

    message = _assert_refused(post_event(client, event_for(spoof)), 400)

    assert f"fileName holds U+{ord(character):04X}" in message
    with configured.session() as session:
        assert session.scalars(select(Image)).all() == []
