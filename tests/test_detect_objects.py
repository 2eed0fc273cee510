"""detect-objects with the real shared detector: labels for the photos of known objects,
orientation, HEIC, and a model that cannot be loaded."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pillow_heif
import pytest
from conftest import IMAGES, MODEL, ROOT, manifest
from PIL import Image, ImageOps
from pipeline import event_for, make_owner, post_event, put_original, reply_event, step_app

import imagerec.steps
from imagerec.blobstore import thumbnail_key, working_key
from imagerec.events import LABELLED, THUMBNAILED
from imagerec.images import register_upload
from imagerec.models import Image as ImageRow

OBJECT_PHOTOS = manifest()["objects"]
pillow_heif.register_heif_opener()  # to write HEIC test files


@pytest.fixture(scope="module")
def client():
    # One app per module: functions-framework re-executes the source on every create_app,
    # and the detector is cached in that module, so this loads the model once.
    return step_app("detect_objects").test_client()


@pytest.fixture
def embedded(embedded_backend, monkeypatch):
    """The embedded backend only, for tests whose point is not storage."""
    for key, value in {**embedded_backend.env, "IMAGEREC_DETECTOR_MODEL": str(MODEL)}.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    yield embedded_backend
    imagerec.steps.settings.cache_clear()


def thumbnailed(backend: Any, path: Path, image_id: str | None = None) -> dict[str, Any]:
    """The event data detect-objects receives for the photo at `path`, its row made as
    extract-metadata makes it."""
    upload = put_original(backend, path, *make_owner(backend), image_id=image_id)
    with backend.session() as session:
        register_upload(session, upload, backend.blobs())
        session.commit()
    content = path.read_bytes()
    with Image.open(io.BytesIO(content)) as image:
        width, height = image.size
        image_format = image.format
    metadata = {
        "creationTime": None,
        "geo": None,
        "exifMake": None,
        "exifModel": None,
        "dimensions": {"width": width, "height": height},
        "orientation": 1,
        "fileSize": len(content),
        "format": image_format,
        "contentHash": hashlib.sha256(content).hexdigest(),
    }
    return {**upload, "metadata": metadata, "thumbnailKey": thumbnail_key(upload["blobKey"])}


def detect(client, backend: Any, path: Path):
    """detect-objects' reply for the photo at `path`."""
    return reply_event(post_event(client, event_for(thumbnailed(backend, path), THUMBNAILED)))


def labels_of(data: dict[str, Any]) -> set[str]:
    return {label["label"].lower() for label in data["labels"]}


@pytest.mark.parametrize("photo", OBJECT_PHOTOS, ids=[p["file"] for p in OBJECT_PHOTOS])
def test_every_prominent_object_is_labelled(client, configured, photo):
    data = thumbnailed(configured, IMAGES / photo["file"])

    reply = reply_event(post_event(client, event_for(data, THUMBNAILED)))

    assert reply["type"] == LABELLED
    assert reply["source"] == "/functions/detect-objects"
    assert reply["subject"] == data["imageId"]
    labelled = reply.data
    assert {k: labelled[k] for k in data} == data, "the incoming data is carried forward"
    assert labelled["model"] == str(MODEL)
    found = labels_of(labelled)
    for thing in photo["visible_objects"]:
        if thing["prominent"]:
            names = {thing["openimages"].lower(), thing["coco"].lower()}
            assert names & found, f"{photo['file']}: {thing['coco']} not among {sorted(found)}"


def test_labels_are_the_best_detection_per_label_above_the_threshold(client, configured):
    labelled = detect(client, configured, IMAGES / "objects" / "dog.jpg").data

    detections = labelled["detections"]
    assert detections, "dog.jpg has objects"
    for d in detections:
        assert d["score"] >= imagerec.steps.settings().detection_threshold
        ymin, xmin, ymax, xmax = d["box"]
        assert 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1
    best = {}
    for d in detections:
        best[d["label"]] = max(best.get(d["label"], 0), d["score"])
    assert {x["label"]: x["score"] for x in labelled["labels"]} == best
    scores = [x["score"] for x in labelled["labels"]]
    assert scores == sorted(scores, reverse=True)


def test_threshold_comes_from_the_settings(client, configured, monkeypatch):
    monkeypatch.setenv("IMAGEREC_DETECTION_THRESHOLD", "0.99")
    imagerec.steps.settings.cache_clear()
    labelled = detect(client, configured, IMAGES / "objects" / "dog.jpg").data

    assert labelled["detections"] == [] and labelled["labels"] == []


def test_detects_on_the_orientation_corrected_image(client, configured, tmp_path):
    photo = IMAGES / "objects" / "dog.jpg"
    upright = reply_event(
        post_event(client, event_for(thumbnailed(configured, photo), THUMBNAILED))
    )
    # Store the pixels turned a quarter, with EXIF orientation 6 saying how to turn them back.
    with Image.open(photo) as image:
        exif = Image.Exif()
        exif[0x0112] = 6
        turned = tmp_path / "dog_orient6.jpg"
        image.transpose(Image.Transpose.ROTATE_90).save(turned, quality=95, exif=exif)
    with Image.open(turned) as check:
        assert ImageOps.exif_transpose(check).size == (768, 576)

    rotated = reply_event(
        post_event(client, event_for(thumbnailed(configured, turned), THUMBNAILED))
    )

    assert dog_box(rotated) == pytest.approx(dog_box(upright), abs=0.03)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_a_large_photo_is_shrunk_before_detection(client, embedded, tmp_path, image_format):
    """6x dog.jpg (4608 px): JPEG is decoded at reduced scale, PNG reduced after decoding."""
    photo = IMAGES / "objects" / "dog.jpg"
    upright = detect(client, embedded, photo)
    large = tmp_path / f"dog_large.{image_format.lower()}"
    with Image.open(photo) as image:
        image.resize((image.width * 6, image.height * 6)).save(
            large, image_format, compress_level=1
        )

    shrunk = detect(client, embedded, large)

    assert "Dog" in {d["label"] for d in shrunk.data["detections"]}
    assert dog_box(shrunk) == pytest.approx(dog_box(upright), abs=0.03)


def dog_box(event) -> list[float]:
    return next(d["box"] for d in event.data["detections"] if d["label"] == "Dog")


@pytest.mark.parametrize("image_format", ["HEIF", "WEBP", "PNG"])
def test_every_supported_format_is_read(client, embedded, tmp_path, image_format):
    photo = IMAGES / "objects" / "dog.jpg"
    converted = tmp_path / f"dog.{image_format.lower()}"
    with Image.open(photo) as image:
        image.save(converted, image_format, quality=90)

    labelled = detect(client, embedded, converted).data

    assert "Dog" in {d["label"] for d in labelled["detections"]}


def test_a_16_bit_greyscale_png_is_seen_as_it_looks(client, embedded, tmp_path):
    # Pillow's convert("RGB") clips 16-bit values to white: the detector would see nothing.
    wide = tmp_path / "dog-16bit.png"
    with Image.open(IMAGES / "objects" / "dog.jpg") as image:
        grey = image.convert("L").convert("I").point(lambda value: value * 257)
        grey.convert("I;16").save(wide)

    labelled = detect(client, embedded, wide).data

    assert "Dog" in {d["label"] for d in labelled["detections"]}


def test_a_phones_heic_is_read(client, embedded):
    labelled = detect(client, embedded, IMAGES / "exif" / "iphone11_gps.heic").data

    assert labelled["model"] == str(MODEL)
    assert isinstance(labelled["detections"], list)


def test_readiness_answers_at_once_and_turns_ready_once_the_model_is_warm(embedded):
    fresh = step_app("detect_objects").test_client()  # a new process, as far as caching goes

    started = time.monotonic()
    first = fresh.get("/")
    assert (first.status_code, first.get_data(as_text=True)) == (503, "not ready")
    assert time.monotonic() - started < 2, "a readiness probe must not wait for the model"

    deadline = time.monotonic() + 60
    while (answer := fresh.get("/")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "ready"


def test_a_model_that_cannot_be_loaded_answers_503_until_it_can(client, configured, tmp_path):
    late_model = tmp_path / "model-not-there-yet"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMAGEREC_DETECTOR_MODEL", str(late_model))
        imagerec.steps.settings.cache_clear()
        event = event_for(thumbnailed(configured, IMAGES / "objects" / "dog.jpg"), THUMBNAILED)

        refused = post_event(client, event)
        assert refused.status_code == 503
        message = refused.get_data(as_text=True)
        assert "detector" in message and str(late_model) in message and "retry" in message
        assert client.get("/").status_code == 503

        # The model arrives (a volume mounted late): the next delivery loads it, no restart.
        shutil.copytree(MODEL, late_model)
        labelled = reply_event(post_event(client, event)).data
        assert labelled["model"] == str(late_model)
        assert "dog" in labels_of(labelled)
    imagerec.steps.settings.cache_clear()


def test_refuses_other_event_types(client, configured):
    data = thumbnailed(configured, IMAGES / "objects" / "dog.jpg")
    response = post_event(client, event_for(data, LABELLED))
    assert response.status_code == 400


def test_a_missing_original_is_refused(client, configured):
    data = thumbnailed(configured, IMAGES / "objects" / "dog.jpg")
    configured.blobs().delete(data["blobKey"])
    response = post_event(client, event_for(data, THUMBNAILED))
    assert response.status_code == 422
    assert data["blobKey"] in response.get_data(as_text=True)


def test_an_event_disagreeing_with_the_row_is_refused_unread(client, configured):
    """A forged event naming another user's original gets 422 and no labels of that photo;
    so does one about a photo deleted since (its original still there)."""
    victim = thumbnailed(configured, IMAGES / "objects" / "dog.jpg")
    forger = thumbnailed(configured, IMAGES / "objects" / "horses.jpg")
    forged = {**forger, "blobKey": victim["blobKey"]}
    response = post_event(client, event_for(forged, THUMBNAILED))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "another blob key" in response.get_data(as_text=True)
    assert "dog" not in response.get_data(as_text=True).lower()

    with configured.session() as session:
        session.delete(session.get(ImageRow, victim["imageId"]))
        session.commit()
    assert configured.blobs().exists(victim["blobKey"])
    response = post_event(client, event_for(victim, THUMBNAILED))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "deleted" in response.get_data(as_text=True)


def test_tensorflow_is_imported_by_detect_objects_alone():
    """Every other step starts without TensorFlow's 2 s and 500 MB; detect-objects imports it
    only when it loads the model."""
    steps = sorted(p.stem for p in (ROOT / "functions").glob("*.py") if p.stem != "__init__")
    script = (
        "import importlib, sys\n"
        f"for step in {steps!r}:\n"
        "    importlib.import_module('functions.' + step)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "detect_objects" in steps and result.stdout.strip() == "False"


def test_a_heic_is_read_from_its_working_copy(client, embedded, tmp_path):
    """make-thumbnail's JPEG copy is what the detector decodes: here it shows horses, the HEIC
    a dog, and the labels follow the copy. Without a copy the HEIC itself is decoded."""
    heic = tmp_path / "dog.heic"
    with Image.open(IMAGES / "objects" / "dog.jpg") as image:
        image.save(heic, "HEIF", quality=90)
    data = thumbnailed(embedded, heic)
    assert labels_of(reply_event(post_event(client, event_for(data, THUMBNAILED))).data) >= {"dog"}

    horses = (IMAGES / "objects" / "horses.jpg").read_bytes()
    embedded.blobs().put(working_key(data["blobKey"]), horses)
    labelled = reply_event(post_event(client, event_for(data, THUMBNAILED))).data

    assert "horse" in labels_of(labelled)
    assert "dog" not in labels_of(labelled)


def test_the_step_can_reach_postgresql_over_tls_after_loading_tensorflow():
    """The order of TensorFlow's and libpq's TLS libraries decides whether the first handshake
    crashes the process (docs/toolchain.md §5); the step loads its model, then reads rows."""
    import psycopg2
    from conftest import POSTGRES_URL, require

    try:
        psycopg2.connect(POSTGRES_URL, sslmode="require").close()
    except psycopg2.OperationalError as e:
        require("PostgreSQL with TLS (Debian's cluster has ssl = on)", e)
    code = (
        "from functions.detect_objects import _import_tensorflow; _import_tensorflow(); "
        "import psycopg2; "
        f"psycopg2.connect({POSTGRES_URL!r}, sslmode='require').close(); print('connected')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "connected"
