"""make-thumbnail over HTTP: upright, bounded, JPEG, beside the original, the same every time."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageChops, ImageOps, ImageStat

import imagerec.steps
from imagerec.blobstore import WORKING_COPY_SIDE, thumbnail_key, working_key
from imagerec.events import ACCEPTED, THUMBNAILED, UPLOADED, encode
from imagerec.models import Image as ImageRow
from imagerec.steps import settings
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
SUPPORTED = [e for e in MANIFEST["exif"] if e["supported_per_design"]]
ORIENTED = [e for e in SUPPORTED if Path(e["file"]).name.startswith("orient")]


@pytest.fixture(scope="module")
def extract():
    return step_app("extract_metadata").test_client()


@pytest.fixture(scope="module")
def client():
    return step_app("make_thumbnail").test_client()


@pytest.fixture
def owner(configured) -> tuple[int, int]:
    return make_owner(configured)


def accepted_data(backend, extract, path: Path, owner: tuple[int, int]) -> dict[str, Any]:
    """The data of the accepted event extract-metadata answers for the file at `path`."""
    reply = reply_event(post_event(extract, event_for(put_original(backend, path, *owner))))
    assert reply["type"] == ACCEPTED, reply.data
    return reply.data


def thumbnail_of(backend, data: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(backend.blobs().get(data["thumbnailKey"])))
    assert image.format == "JPEG"
    return image


@pytest.mark.parametrize("entry", SUPPORTED, ids=[e["file"] for e in SUPPORTED])
def test_thumbnail_fits_the_box_upright_with_the_display_aspect(
    configured, extract, client, owner, entry
):
    accepted = accepted_data(configured, extract, IMAGES / entry["file"], owner)

    reply = reply_event(post_event(client, event_for(accepted, ACCEPTED)))

    assert reply["type"] == THUMBNAILED
    assert reply["source"] == "/functions/make-thumbnail"
    assert reply["subject"] == accepted["imageId"]
    data = dict(reply.data)
    assert data.pop("thumbnailKey") == thumbnail_key(accepted["blobKey"])
    assert data == accepted  # accumulating: nothing renamed or dropped
    thumbnail = thumbnail_of(configured, reply.data)
    assert thumbnail.mode in ("RGB", "L")
    # A thumbnail carries no orientation of its own: its pixels are upright.
    assert thumbnail.getexif().get(0x0112) in (None, 1)
    width, height = entry["display_width"], entry["display_height"]
    box = settings().thumbnail_size
    assert max(thumbnail.size) == min(box, max(width, height))  # fits, never enlarged
    assert thumbnail.width / thumbnail.height == pytest.approx(width / height, abs=0.02)


@pytest.mark.parametrize("entry", ORIENTED, ids=[e["file"] for e in ORIENTED])
def test_orientation_is_applied_once_by_content(configured, extract, client, owner, entry):
    path = IMAGES / entry["file"]
    accepted = accepted_data(configured, extract, path, owner)
    reply = reply_data(post_event(client, event_for(accepted, ACCEPTED)))
    thumbnail = thumbnail_of(configured, reply).convert("RGB")

    with Image.open(path) as original:
        upright = ImageOps.exif_transpose(original).convert("RGB").resize(thumbnail.size)
        as_stored = original.convert("RGB").resize(thumbnail.size)

    assert _difference(thumbnail, upright) < 6
    # The stored pixels (orientation not applied) look clearly different.
    assert _difference(thumbnail, as_stored) > 4 * _difference(thumbnail, upright)


def _difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two same-sized images, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_heif_rotation_is_applied_exactly_once(configured, extract, client, owner, tmp_path):
    entry = next(e for e in ORIENTED if e["file"] == "exif/orient6_landscape.jpg")
    with Image.open(IMAGES / entry["file"]) as jpeg:
        upright = ImageOps.exif_transpose(jpeg).convert("RGB")
        # pillow-heif turns the EXIF orientation into the HEIF irot box on the way out.
        jpeg.save(tmp_path / "turned.heic", "HEIF", exif=jpeg.info["exif"], quality=90)
    accepted = accepted_data(configured, extract, tmp_path / "turned.heic", owner)
    display = {"width": entry["display_width"], "height": entry["display_height"]}
    # pillow-heif applies irot while decoding: those are the stored pixels, already upright.
    assert accepted["metadata"]["dimensions"] == display
    assert accepted["metadata"]["orientation"] == 1

    reply = reply_data(post_event(client, event_for(accepted, ACCEPTED)))

    thumbnail = thumbnail_of(configured, reply).convert("RGB")
    assert thumbnail.width / thumbnail.height == pytest.approx(
        display["width"] / display["height"], abs=0.02
    )
    assert _difference(thumbnail, upright.resize(thumbnail.size)) < 6


def test_redelivery_writes_the_same_key_and_bytes(configured, extract, client, owner):
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_sx60_orient6.jpg", owner)
    first = reply_data(post_event(client, event_for(accepted, ACCEPTED)))
    first_bytes = configured.blobs().get(first["thumbnailKey"])
    again = reply_data(post_event(client, event_for(accepted, ACCEPTED), structured=True))
    assert again == first
    assert configured.blobs().get(again["thumbnailKey"]) == first_bytes


def test_thumbnail_size_comes_from_the_settings(configured, extract, client, owner, monkeypatch):
    monkeypatch.setenv("IMAGEREC_THUMBNAIL_SIZE", "64")
    imagerec.steps.settings.cache_clear()
    accepted = accepted_data(configured, extract, IMAGES / "exif/nokia_8_3_gps.jpg", owner)
    reply = reply_data(post_event(client, event_for(accepted, ACCEPTED)))
    assert max(thumbnail_of(configured, reply).size) == 64


def test_a_large_jpeg_is_decoded_at_reduced_scale(configured, extract, client, owner, monkeypatch):
    """Pillow's draft(): libjpeg decodes the 4608x1976 photo at 1/4 scale, never in full."""
    decoded: list[tuple[int, int]] = []
    load = Image.Image.load

    def recording_load(image: Image.Image):
        if image.format == "JPEG":
            decoded.append(image.size)
        return load(image)

    accepted = accepted_data(configured, extract, IMAGES / "exif/nokia_8_3_gps.jpg", owner)
    width, height = accepted["metadata"]["dimensions"].values()
    monkeypatch.setattr(Image.Image, "load", recording_load)
    reply_data(post_event(client, event_for(accepted, ACCEPTED)))

    assert decoded, "the original was never decoded"
    assert max(max(size) for size in decoded) <= max(width, height) // 4
    assert all(max(size) >= 256 for size in decoded)  # never below the thumbnail's size


def _draw(mode: str, size: tuple[int, int] = (300, 200)) -> Image.Image:
    """A test card in `mode`: left half opaque dark, right half fully transparent (if it can be)."""
    if mode in ("RGBA", "LA", "PA", "P"):
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        image.paste((40, 40, 40, 255), (0, 0, size[0] // 2, size[1]))
        if mode == "P":
            return image.convert("P", palette=Image.Palette.ADAPTIVE).convert("RGBA").quantize()
        return image.convert(mode)
    if mode == "I;16":
        # paste() fills I;16 byte-wise, so build the rows: left half 0, right half 60000.
        row = (0).to_bytes(2, "little") * (size[0] // 2)
        row += (60000).to_bytes(2, "little") * (size[0] - size[0] // 2)
        return Image.frombytes("I;16", size, row * size[1])
    return Image.new(mode, size, "gray" if mode != "CMYK" else (0, 0, 0, 200))


@pytest.mark.parametrize(
    ("mode", "file_format"),
    [
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
        ("RGBA", "WEBP"),
    ],
)
def test_every_pixel_mode_becomes_a_jpeg(
    configured, extract, client, owner, tmp_path, mode, file_format
):
    card = _draw(mode)
    path = tmp_path / f"card.{file_format.lower()}"
    card.save(path, file_format, **({"lossless": True} if file_format == "WEBP" else {}))
    accepted = accepted_data(configured, extract, path, owner)

    response = post_event(client, event_for(accepted, ACCEPTED))

    thumbnail = thumbnail_of(configured, reply_data(response)).convert("RGB")
    assert thumbnail.size == (256, 171)
    if "A" in mode or mode == "P":
        # Transparent pixels become white, opaque ones keep their colour.
        right = thumbnail.getpixel((thumbnail.width - 5, thumbnail.height // 2))
        left = thumbnail.getpixel((5, thumbnail.height // 2))
        assert min(right) > 245 and max(left) < 60
    if mode == "I;16":
        # 60000 of 65535 is light grey, not clipped to white; 0 stays black.
        right = thumbnail.getpixel((thumbnail.width - 5, thumbnail.height // 2))[0]
        assert 200 < right < 245
        assert thumbnail.getpixel((5, thumbnail.height // 2))[0] < 15


def test_a_missing_original_is_a_422(configured, extract, client, owner):
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_40d.jpg", owner)
    configured.blobs().delete(accepted["blobKey"])

    response = post_event(client, event_for(accepted, ACCEPTED))

    assert response.status_code == 422
    assert response.mimetype == "text/plain"
    assert accepted["blobKey"] in response.get_data(as_text=True)
    assert not configured.blobs().exists(thumbnail_key(accepted["blobKey"]))


def test_an_event_naming_another_users_original_is_refused_and_writes_nothing(
    configured, extract, client, owner
):
    """A forged accepted event: the sender's own ids, the victim's original as blobKey."""
    victim = accepted_data(
        configured, extract, IMAGES / "exif/canon_40d.jpg", make_owner(configured)
    )
    mine = accepted_data(configured, extract, IMAGES / "exif/canon_sx60_orient6.jpg", owner)
    victim_thumbnail = thumbnail_key(victim["blobKey"])
    configured.blobs().put(victim_thumbnail, b"the victim's thumbnail")

    response = post_event(client, event_for({**mine, "blobKey": victim["blobKey"]}, ACCEPTED))

    assert response.status_code == 422, response.get_data(as_text=True)
    assert configured.blobs().get(victim_thumbnail) == b"the victim's thumbnail"
    assert not configured.blobs().exists(thumbnail_key(mine["blobKey"]))


def test_a_deleted_photo_gets_no_thumbnail(configured, extract, client, owner):
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_40d.jpg", owner)
    with configured.session() as session:
        session.delete(session.get(ImageRow, accepted["imageId"]))
        session.commit()

    response = post_event(client, event_for(accepted, ACCEPTED))

    assert response.status_code == 422
    assert not configured.blobs().exists(thumbnail_key(accepted["blobKey"]))


def test_an_original_that_is_not_an_image_is_a_422_not_a_500(configured, extract, client, owner):
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_40d.jpg", owner)
    configured.blobs().put(accepted["blobKey"], (IMAGES / "bad/truncated.jpg").read_bytes())

    response = post_event(client, event_for(accepted, ACCEPTED))

    assert response.status_code == 422, response.get_data(as_text=True)


def test_malformed_events_are_a_400(configured, extract, client, owner):
    assert client.post("/", data=b"hello", headers={"ce-specversion": "1.0"}).status_code == 400
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_40d.jpg", owner)
    del accepted["metadata"]
    response = post_event(client, event_for(accepted, ACCEPTED))
    assert response.status_code == 400
    assert "metadata" in response.get_data(as_text=True)


def test_an_uploaded_event_is_a_400(configured, client, owner):
    data = put_original(configured, IMAGES / "exif/canon_40d.jpg", *owner)
    response = post_event(client, event_for(data, UPLOADED))
    assert response.status_code == 400
    assert ACCEPTED in response.get_data(as_text=True)


def test_the_functions_framework_command_serves_the_step(embedded_backend, monkeypatch):
    for key, value in embedded_backend.env.items():
        monkeypatch.setenv(key, value)
    imagerec.steps.settings.cache_clear()
    extract = step_app("extract_metadata").test_client()
    owner = make_owner(embedded_backend)
    accepted = accepted_data(embedded_backend, extract, IMAGES / "exif/orient8_portrait.jpg", owner)

    with running_step("make_thumbnail", embedded_backend.env) as url:
        headers, body = encode(event_for(accepted, ACCEPTED), structured=True)
        response = requests.post(url, data=body, headers=headers, timeout=30)

    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == THUMBNAILED
    data = json.loads(response.content)
    assert data["thumbnailKey"] == thumbnail_key(accepted["blobKey"])
    assert embedded_backend.blobs().exists(data["thumbnailKey"])
    imagerec.steps.settings.cache_clear()


def test_a_heic_gets_an_upright_working_copy_from_the_same_decode(
    configured, extract, client, owner, tmp_path
):
    """Detection and the browser read this JPEG instead of decoding the HEIC again."""
    entry = next(e for e in ORIENTED if e["file"] == "exif/orient6_landscape.jpg")
    with Image.open(IMAGES / entry["file"]) as jpeg:
        upright = ImageOps.exif_transpose(jpeg).convert("RGB")
        big = upright.resize((upright.width * 6, upright.height * 6))
        big.save(tmp_path / "big.heic", "HEIF", quality=90)
    accepted = accepted_data(configured, extract, tmp_path / "big.heic", owner)

    reply_data(post_event(client, event_for(accepted, ACCEPTED)))

    copy = Image.open(io.BytesIO(configured.blobs().get(working_key(accepted["blobKey"]))))
    assert copy.format == "JPEG"
    assert WORKING_COPY_SIDE / 2 < max(copy.size) <= WORKING_COPY_SIDE
    assert copy.width / copy.height == pytest.approx(big.width / big.height, abs=0.01)
    assert _difference(copy.convert("RGB"), big.resize(copy.size)) < 6


def test_a_jpeg_gets_no_working_copy(configured, extract, client, owner):
    accepted = accepted_data(configured, extract, IMAGES / "exif/canon_sx60_orient6.jpg", owner)

    reply_data(post_event(client, event_for(accepted, ACCEPTED)))

    assert not configured.blobs().exists(working_key(accepted["blobKey"]))
