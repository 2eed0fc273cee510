"""Photos: upload (limits, duplicates, bad files), the uploaded event, serving, delete, retry."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
from conftest import IMAGES, manifest
from PIL import Image as PILImage
from test_web_app import BUS, DOG, count, make_app, set_done, sign_up

from imagerec.blobstore import thumbnail_key, working_key
from imagerec.events import UPLOADED, event_data, parse_event
from imagerec.models import Detection, Image, Status

pytest_plugins = ["test_web_app"]

HEIC = IMAGES / "exif" / "iphone11_gps.heic"
PNG = IMAGES / "exif" / "orient3_imagemagick.png"


def _row(backend, image_id: str) -> Image | None:
    with backend.session() as db:
        return db.get(Image, image_id)


# --- upload ----------------------------------------------------------------------------------


def test_upload_stores_original_and_row(backend, ann):
    album_id = ann.create_album()
    response = ann.upload(album_id, DOG, BUS)
    assert response.status_code == 201
    images = response.json["images"]
    assert [i["fileName"] for i in images] == ["dog.jpg", "bus.jpg"]
    for image, path in zip(images, (DOG, BUS), strict=True):
        row = _row(backend, image["id"])
        assert row.status == Status.UPLOADED and image["status"] == "uploaded"
        assert row.blob_key == f"{ann.id}/{album_id}/{image['id']}.jpg"
        assert row.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row.size == path.stat().st_size
        assert backend.blobs().get(row.blob_key) == path.read_bytes()


def test_blob_key_never_comes_from_the_file_name(backend, ann):
    album_id = ann.create_album()
    jpeg = IMAGES / "bad" / "jpeg_named.png"
    image = ann.upload_one(album_id, (jpeg.read_bytes(), "../../etc/passwd.png"))
    row = _row(backend, image["id"])
    assert row.blob_key == f"{ann.id}/{album_id}/{image['id']}.jpg"
    assert row.file_name == "../../etc/passwd.png"


def test_duplicate_upload_is_recognised_and_stores_nothing(backend, ann):
    album_id = ann.create_album()
    first = ann.upload_one(album_id, DOG)
    keys_before = count(backend, Image)
    response = ann.upload(album_id, (DOG.read_bytes(), "same-dog-again.jpg"))
    assert response.status_code == 409
    assert response.json["error"] == "same-dog-again.jpg is already in this album as dog.jpg."
    assert response.json["duplicates"][0]["duplicateOf"]["id"] == first["id"]
    assert response.json["images"] == []
    assert count(backend, Image) == keys_before


def test_same_bytes_in_another_album_is_fine(ann):
    ann.upload_one(ann.create_album("One"), DOG)
    ann.upload_one(ann.create_album("Two"), DOG)


def test_batch_with_a_duplicate_creates_the_rest(backend, ann):
    album_id = ann.create_album()
    ann.upload_one(album_id, DOG)
    response = ann.upload(album_id, DOG, BUS)
    assert response.status_code == 201
    assert [i["fileName"] for i in response.json["images"]] == ["bus.jpg"]
    assert [d["fileName"] for d in response.json["duplicates"]] == ["dog.jpg"]
    assert count(backend, Image) == 2


def test_oversized_upload_is_413_with_a_clear_message(backend):
    app = make_app(backend, MAX_UPLOAD_BYTES=150_000)
    ann = sign_up(app, "ann")
    album_id = ann.create_album()
    assert DOG.stat().st_size > 150_000
    response = ann.upload(album_id, DOG)
    assert response.status_code == 413
    assert response.json["error"] == "dog.jpg is larger than the limit of 146 KB per photo."
    assert count(backend, Image) == 0
    # A request far over the limit is cut off before it is read, with the same kind of answer.
    huge = ann.upload(album_id, (b"\xff\xd8\xff" + b"0" * 4_000_000, "huge.jpg"))
    assert huge.status_code == 413
    assert "larger than the limit" in huge.json["error"]
    assert count(backend, Image) == 0


def test_empty_file_is_refused_at_once(backend, ann):
    album_id = ann.create_album()
    response = ann.upload(album_id, IMAGES / "bad" / "empty.jpg")
    assert response.status_code == 400
    assert response.json["error"] == "empty.jpg is empty (0 bytes)."
    assert count(backend, Image) == 0


def test_upload_without_files_is_400(ann):
    album_id = ann.create_album()
    response = ann.api("POST", f"/api/albums/{album_id}/images", data={})
    assert response.status_code == 400 and "file" in response.json["error"]


@pytest.mark.parametrize(
    "entry", [e for e in manifest()["bad"] if e["bytes"] > 0], ids=lambda e: e["file"]
)
def test_bad_files_are_accepted_for_the_pipeline_to_judge(backend, ann, entry):
    album_id = ann.create_album()
    path = IMAGES / entry["file"]
    image = ann.upload_one(album_id, path)
    assert image["status"] == "uploaded"
    original = ann.get(image["urls"]["original"])
    assert original.status_code == 200
    assert original.data == path.read_bytes()
    assert original.headers["X-Content-Type-Options"] == "nosniff"
    if entry["format_by_content"] in ("JPEG", "PNG"):
        assert original.content_type == f"image/{entry['format_by_content'].lower()}"
        assert original.headers["Content-Disposition"].startswith("inline")
    else:
        assert original.content_type == "application/octet-stream"
        assert original.headers["Content-Disposition"].startswith("attachment")


def test_upload_form_without_javascript(backend, ann):
    album_id = ann.create_album()
    response = ann.form(
        f"/albums/{album_id}/photos",
        {"file": [(DOG.open("rb"), "dog.jpg"), (DOG.open("rb"), "again.jpg")]},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "again.jpg is already in this album as dog.jpg." in response.text
    assert count(backend, Image) == 1


# --- the uploaded event ----------------------------------------------------------------------


def test_without_a_broker_the_image_stays_uploaded(backend, app, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    app.extensions["imagerec_events"].join()
    assert _row(backend, image["id"]).status == Status.UPLOADED


def test_with_a_broker_the_uploaded_event_arrives(backend, broker):
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    app.extensions["imagerec_events"].join()

    [request] = broker.requests
    event = parse_event(request["headers"], request["body"])
    assert event["type"] == UPLOADED
    assert event["source"] == "/web"
    assert event["subject"] == image["id"]
    assert event_data(event) == {
        "imageId": image["id"],
        "userId": ann.id,
        "albumId": album_id,
        "blobKey": f"{ann.id}/{album_id}/{image['id']}.jpg",
        "fileName": "dog.jpg",
        "contentType": "image/jpeg",
        "size": DOG.stat().st_size,
    }


def test_upload_does_not_wait_for_the_broker(backend, broker):
    broker.hold.clear()  # the broker takes the request but does not answer until released
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    album_id = ann.create_album()
    started = time.monotonic()
    image = ann.upload_one(album_id, DOG)
    assert time.monotonic() - started < 5
    assert broker.requests == []
    broker.hold.set()
    app.extensions["imagerec_events"].join()
    assert [json.loads(r["body"])["imageId"] for r in broker.requests] == [image["id"]]


def test_unreachable_broker_leaves_the_image_uploaded(backend):
    app = make_app(backend, SINK="http://127.0.0.1:9/nothing", SEND_ATTEMPTS=1)
    ann = sign_up(app, "ann")
    image = ann.upload_one(ann.create_album(), DOG)
    app.extensions["imagerec_events"].join()
    assert _row(backend, image["id"]).status == Status.UPLOADED


def test_retry_resends_a_failed_image(backend, broker):
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=Status.FAILED, reason="detect-objects kept failing")
    assert ann.get(f"/api/images/{image['id']}").json["image"]["retryable"] is True

    response = ann.api("POST", f"/api/images/{image['id']}/retry")
    assert response.status_code == 202
    assert response.json["image"]["status"] == "uploaded"
    assert response.json["image"]["reason"] is None
    app.extensions["imagerec_events"].join()
    assert len(broker.requests) == 2
    assert broker.requests[0]["body"] == broker.requests[1]["body"]
    assert _row(backend, image["id"]).status == Status.UPLOADED


def test_retry_form_and_done_images_do_not_retry(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=Status.FAILED, reason="boom")
    assert ann.form(f"/photos/{image['id']}/retry").status_code == 302
    assert _row(backend, image["id"]).status == Status.UPLOADED
    set_done(backend, image["id"])
    response = ann.api("POST", f"/api/images/{image['id']}/retry")
    assert response.status_code == 409 and "done" in response.json["error"]


def test_an_uploaded_image_offers_retry_only_after_a_while(backend, app, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    assert ann.get(f"/api/images/{image['id']}").json["image"]["retryable"] is False
    app.config["RETRY_UPLOADED_AFTER_SECONDS"] = -1
    assert ann.get(f"/api/images/{image['id']}").json["image"]["retryable"] is True


def test_a_stuck_processing_image_can_be_retried(backend, app, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=Status.PROCESSING)
    assert ann.get(f"/api/images/{image['id']}").json["image"]["retryable"] is False
    assert ann.api("POST", f"/api/images/{image['id']}/retry").status_code == 409
    app.config["STUCK_AFTER_SECONDS"] = -1
    assert ann.get(f"/api/images/{image['id']}").json["image"]["retryable"] is True
    assert ann.api("POST", f"/api/images/{image['id']}/retry").status_code == 202
    assert _row(backend, image["id"]).status == Status.UPLOADED


# --- serving ---------------------------------------------------------------------------------


def test_original_type_comes_from_content_not_name(ann):
    album_id = ann.create_album()
    jpeg = ann.upload_one(album_id, (IMAGES.joinpath("bad/jpeg_named.png").read_bytes(), "a.png"))
    png = ann.upload_one(album_id, (PNG.read_bytes(), "b.jpg"))
    assert ann.get(jpeg["urls"]["original"]).content_type == "image/jpeg"
    assert ann.get(png["urls"]["original"]).content_type == "image/png"


def test_original_type_comes_from_the_stored_format_once_known(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], format="JPEG")
    response = ann.get(image["urls"]["original"])
    assert response.content_type == "image/jpeg"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]


def test_thumbnail_is_404_until_made_then_served(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    assert image["urls"]["thumbnail"] is None
    assert ann.get(f"/photos/{image['id']}/thumbnail").status_code == 404
    key = thumbnail_key(f"{ann.id}/{album_id}/{image['id']}.jpg")
    backend.blobs().put(key, DOG.read_bytes())
    set_done(backend, image["id"], thumbnail_key=key)
    url = ann.get(f"/api/images/{image['id']}").json["image"]["urls"]["thumbnail"]
    response = ann.get(url)
    assert response.status_code == 200 and response.content_type == "image/jpeg"
    assert response.data == DOG.read_bytes()


def test_heic_is_converted_to_jpeg_for_display(ann):
    image = ann.upload_one(ann.create_album(), HEIC)
    original = ann.get(image["urls"]["original"])
    assert original.content_type == "image/heic"
    shown = ann.get(image["urls"]["display"])
    assert shown.status_code == 200 and shown.content_type == "image/jpeg"
    assert shown.data[:3] == b"\xff\xd8\xff"
    entry = next(e for e in manifest()["exif"] if e["file"] == "exif/iphone11_gps.heic")
    with PILImage.open(io.BytesIO(shown.data)) as picture:
        assert max(picture.size) <= 2048
        # Upright as the viewer sees it: the same shape as the manifest's display size.
        portrait = entry["display_height"] > entry["display_width"]
        assert (picture.height > picture.width) is portrait


def test_a_heics_working_copy_is_displayed_without_decoding_the_heic(backend, ann):
    image = ann.upload_one(ann.create_album(), HEIC)
    copy = DOG.read_bytes()  # make-thumbnail's upright JPEG; any JPEG shows which is served
    backend.blobs().put(working_key(_row(backend, image["id"]).blob_key), copy)

    shown = ann.get(image["urls"]["display"])

    assert shown.status_code == 200 and shown.content_type == "image/jpeg"
    assert shown.data == copy


def test_deleting_a_heic_removes_its_working_copy(backend, ann):
    image = ann.upload_one(ann.create_album(), HEIC)
    key = working_key(_row(backend, image["id"]).blob_key)
    backend.blobs().put(key, DOG.read_bytes())

    assert ann.api("DELETE", f"/api/images/{image['id']}").status_code == 204

    assert not backend.blobs().exists(key)


def test_display_refuses_to_decode_a_huge_heif(backend):
    app = make_app(backend, MAX_IMAGE_PIXELS=1000)
    ann = sign_up(app, "ann")
    image = ann.upload_one(ann.create_album(), HEIC)
    assert ann.get(image["urls"]["display"]).status_code == 404


def test_display_serves_browser_formats_as_stored(ann):
    image = ann.upload_one(ann.create_album(), PNG)
    shown = ann.get(image["urls"]["display"])
    assert shown.content_type == "image/png" and shown.data == PNG.read_bytes()


def test_display_of_a_non_image_is_404(ann):
    image = ann.upload_one(ann.create_album(), IMAGES / "bad" / "drawing.svg")
    assert ann.get(image["urls"]["display"]).status_code == 404


def test_download_name_with_control_characters_is_safe(ann):
    image = ann.upload_one(ann.create_album(), (DOG.read_bytes(), 'we"ird\tname\u00e9.jpg'))
    response = ann.get(image["urls"]["original"])
    assert response.status_code == 200
    assert "\t" not in response.headers["Content-Disposition"]


def test_missing_blob_is_404(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    backend.blobs().delete(_row(backend, image["id"]).blob_key)
    assert ann.get(image["urls"]["original"]).status_code == 404


# --- delete ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_form", [False, True])
def test_delete_photo_removes_row_detections_and_blobs(backend, ann, use_form):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    other = ann.upload_one(album_id, BUS)
    original = f"{ann.id}/{album_id}/{image['id']}.jpg"
    backend.blobs().put(thumbnail_key(original), b"thumb")
    set_done(backend, image["id"], [("Dog", 0.8, [0.1, 0.1, 0.9, 0.9])])
    if use_form:
        response = ann.form(f"/photos/{image['id']}/delete")
        assert response.headers["Location"] == f"/albums/{album_id}"
    else:
        assert ann.api("DELETE", f"/api/images/{image['id']}").status_code == 204
    assert ann.get(f"/api/images/{image['id']}").status_code == 404
    assert not backend.blobs().exists(original)
    assert not backend.blobs().exists(thumbnail_key(original))
    assert count(backend, Detection) == 0
    assert ann.get(f"/api/images/{other['id']}").status_code == 200
    # The same bytes may come back once deleted.
    ann.upload_one(album_id, DOG)


# --- ownership -------------------------------------------------------------------------------


def test_other_users_photos_are_404_everywhere(backend, ann, bob):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    key = thumbnail_key(f"{ann.id}/{album_id}/{image['id']}.jpg")
    backend.blobs().put(key, b"thumb")
    set_done(backend, image["id"], status=Status.FAILED, reason="x", thumbnail_key=key)
    image_id = image["id"]
    for url in (
        f"/photos/{image_id}",
        f"/photos/{image_id}/original",
        f"/photos/{image_id}/thumbnail",
        f"/photos/{image_id}/display",
    ):
        response = bob.get(url)
        assert response.status_code == 404, url
        assert response.data != DOG.read_bytes()
    for url in (f"/photos/{image_id}/delete", f"/photos/{image_id}/retry"):
        assert bob.form(url).status_code == 404, url
    for method, url in (
        ("GET", f"/api/images/{image_id}"),
        ("DELETE", f"/api/images/{image_id}"),
        ("POST", f"/api/images/{image_id}/retry"),
    ):
        response = bob.api(method, url)
        assert response.status_code == 404, url
        assert response.json == {"error": "No such photo."}
    # Bob cannot slip a photo into Ann's album either.
    assert bob.upload(album_id, BUS).status_code == 404
    row = _row(backend, image_id)
    assert row.status == Status.FAILED
    assert backend.blobs().exists(row.blob_key)
    assert count(backend, Image) == 1


@pytest.mark.parametrize("image_id", ["x" * 300, "-leading-dash", "with space", "dot.jpg"])
def test_photo_ids_that_cannot_exist_are_404(ann, image_id):
    assert ann.get(f"/api/images/{image_id}").status_code == 404
    assert ann.get(f"/photos/{image_id}/original").status_code == 404


@pytest.mark.parametrize("claimed", ["image/" + "x" * 400, "image/jp\x00eg", "not a type"])
def test_a_nonsense_content_type_is_not_kept(backend, ann, claimed):
    album_id = ann.create_album()
    response = ann.api(
        "POST",
        f"/api/albums/{album_id}/images",
        data={"file": (io.BytesIO(DOG.read_bytes()), "dog.jpg", claimed)},
    )
    assert response.status_code == 201, response.json
    image = response.json["images"][0]
    assert image["contentType"] is None
    with backend.session() as db:
        assert db.get(Image, image["id"]).content_type is None


def test_a_plain_content_type_is_kept_to_show(ann):
    album_id = ann.create_album()
    response = ann.api(
        "POST",
        f"/api/albums/{album_id}/images",
        data={"file": (io.BytesIO(DOG.read_bytes()), "dog.jpg", "image/jpeg")},
    )
    assert response.json["images"][0]["contentType"] == "image/jpeg"


def test_bidi_and_line_controls_are_dropped_from_an_uploaded_file_name(backend, ann):
    """The user's name stays readable; what could make it show as another is not kept."""
    album_id = ann.create_album()
    image = ann.upload_one(album_id, (DOG.read_bytes(), "holiday\u202egpj.exe\u2028 2024.jpg"))
    assert image["fileName"] == "holidaygpj.exe 2024.jpg"
    assert _row(backend, image["id"]).file_name == "holidaygpj.exe 2024.jpg"


def _fill_the_store(backend, monkeypatch) -> None:
    """Make the store refuse writes for want of space, as each backend does: a folder on a
    full disk (ENOSPC), Redis at maxmemory with noeviction (its OOM error; test_core.py sees
    the real one, which would fill the Redis other tests share)."""
    if backend.blob_url.startswith("redis://"):
        import redis

        def refuse(*args, **kwargs):
            raise redis.exceptions.OutOfMemoryError(
                "command not allowed when used memory > 'maxmemory'."
            )

        monkeypatch.setattr(redis.Redis, "set", refuse)
    else:
        import errno
        import os

        def refuse(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("imagerec.blobstore.os.fsync", refuse)


def test_a_full_photo_store_is_507_not_unreachable_and_stores_nothing(backend, monkeypatch):
    app = make_app(backend)
    ann = sign_up(app, "ann")
    album_id = ann.create_album()
    _fill_the_store(backend, monkeypatch)

    files = [(io.BytesIO(DOG.read_bytes()), "dog.jpg")]
    response = ann.api(
        "POST", f"/api/albums/{album_id}/images", data={"file": files},
        content_type="multipart/form-data",
    )  # fmt: skip

    assert response.status_code == 507, response.json
    assert response.json["error"] == (
        "The photo store is full, so nothing was stored; try again once space is freed."
    )
    assert count(backend, Image) == 0


def test_a_rejected_file_is_only_ever_downloaded_never_rendered(backend, ann):
    # What the pipeline rejected may still start like a PNG (a truncated one, a polyglot).
    album_id = ann.create_album()
    png = (IMAGES / "bad" / "png_header_garbage.png").read_bytes()
    image = ann.upload_one(album_id, (png, "looks-fine.png"))
    set_done(backend, image["id"], status=Status.REJECTED, reason="The file is truncated.")

    for route in ("display", "original"):
        response = ann.get(f"/photos/{image['id']}/{route}")
        assert response.status_code == 200, route
        assert response.data == png
        assert response.headers["Content-Disposition"].startswith("attachment;"), route
        assert response.mimetype == "application/octet-stream", route
        assert response.headers["X-Content-Type-Options"] == "nosniff"
