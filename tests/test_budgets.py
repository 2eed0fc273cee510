"""What one photo may cost a step: its EXIF is measured before it is parsed, its ICC profile
is not copied into thumbnails when large, and its pixels fit the memory a step has per photo.
The hostile files are made here (tests/bombs.py), never committed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage
from PIL import ImageStat

import imagerec.steps
from imagerec.blobstore import thumbnail_key, working_key
from imagerec.events import ACCEPTED, REJECTED
from imagerec.exif import MAX_EXIF_BYTES, MAX_EXIF_READS, exif_block, exif_reads
from imagerec.formats import register_heif_opener
from imagerec.memory import STEP_RESERVE, memory_limit, photo_memory
from imagerec.pixels import (
    MAX_JPEG_SCANS,
    MAX_KEPT_ICC_BYTES,
    PEAK_BYTES_PER_PIXEL,
    jpeg_scans,
    peak_bytes_per_pixel,
)
from tests.bombs import (
    exif_bomb,
    icc_profile,
    jpeg_scan_bomb,
    jpeg_with_exif,
    jpeg_with_icc,
    png_with_exif,
    png_with_text,
)
from tests.conftest import IMAGES, ROOT
from tests.pipeline import event_for, make_owner, post_event, put_original, reply_event, step_app

# Generous: what these files cost before the budgets was minutes; within them, milliseconds.
NOT_MINUTES = 10.0


@pytest.fixture(scope="module")
def extract():
    return step_app("extract_metadata").test_client()


@pytest.fixture(scope="module")
def thumbnail():
    return step_app("make_thumbnail").test_client()


@pytest.fixture
def owner(configured) -> tuple[int, int]:
    return make_owner(configured)


def _store(backend, tmp_path: Path, content: bytes, owner: tuple[int, int]) -> dict[str, Any]:
    path = tmp_path / uuid.uuid4().hex
    path.write_bytes(content)
    return put_original(backend, path, *owner)


def _extract(client, data: dict[str, Any]):
    started = time.monotonic()
    reply = reply_event(post_event(client, event_for(data)))
    return reply, time.monotonic() - started


# --- EXIF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        # The reported files: 795 KB of PNG (63-252 CPU-s before), 64 KB of JPEG (18 s).
        pytest.param(lambda: png_with_exif(exif_bomb(65_535)), id="png-65535-entries"),
        pytest.param(lambda: jpeg_with_exif(exif_bomb(5_400)), id="jpeg-5400-entries"),
        pytest.param(lambda: jpeg_with_exif(exif_bomb(2_700, kind=5)), id="jpeg-rationals"),
    ],
)
def test_an_exif_bomb_is_rejected_at_once_with_a_reason(
    configured, extract, owner, tmp_path, content
):
    data = _store(configured, tmp_path, content(), owner)

    reply, seconds = _extract(extract, data)

    assert seconds < NOT_MINUTES
    assert reply["type"] == REJECTED
    assert "EXIF" in reply.data["reason"]


def test_an_exif_bomb_replayed_as_accepted_is_refused_by_the_pixel_steps_too(
    configured, extract, thumbnail, owner, tmp_path
):
    """A forged accepted event for a rejected bomb: make-thumbnail measures the EXIF before
    Pillow's orientation reads it, and refuses (422), writing nothing."""
    data = _store(configured, tmp_path, png_with_exif(exif_bomb(65_535)), owner)
    _extract(extract, data)  # registers the photo (and rejects it)
    with PILImage.open(IMAGES / "objects/dog.jpg") as genuine:
        size = {"width": genuine.width, "height": genuine.height}
    metadata = {
        "creationTime": None,
        "geo": None,
        "exifMake": None,
        "exifModel": None,
        "dimensions": size,
        "orientation": 1,
        "fileSize": data["size"],
        "format": "PNG",
        "contentHash": "0" * 64,
    }

    started = time.monotonic()
    response = post_event(thumbnail, event_for({**data, "metadata": metadata}, ACCEPTED))

    assert time.monotonic() - started < NOT_MINUTES
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "EXIF" in response.get_data(as_text=True)
    assert not configured.blobs().exists(thumbnail_key(data["blobKey"]))


def test_a_large_exif_block_is_refused_naming_the_limit(configured, extract, owner, tmp_path):
    block = exif_bomb(MAX_EXIF_BYTES // 12, kind=3, count=1)  # harmless entries, too many bytes
    assert len(block) > MAX_EXIF_BYTES

    reply, _ = _extract(extract, _store(configured, tmp_path, png_with_exif(block), owner))

    assert reply["type"] == REJECTED
    assert f"at most {MAX_EXIF_BYTES // 1024} KB" in reply.data["reason"]


def test_exif_within_the_budget_is_still_read(configured, extract, owner, tmp_path):
    path = tmp_path / "many-tags.jpg"
    with PILImage.open(IMAGES / "exif/canon_40d.jpg") as original:
        exif = original.getexif()
        exif.get_ifd(0x8769).update({0xC000 + i: b"x" * 40 for i in range(300)})
        original.save(path, exif=exif.tobytes())

    reply = reply_event(post_event(extract, event_for(put_original(configured, path, *owner))))

    assert reply["type"] == ACCEPTED
    assert reply.data["metadata"]["exifModel"] == "Canon EOS 40D"


def test_every_shared_photo_is_far_within_the_exif_budget():
    register_heif_opener()
    measured = 0
    for path in sorted(IMAGES.glob("*/*")):
        try:
            with PILImage.open(path) as image:
                image.load()
                block = exif_block(image.info)
        except Exception:
            continue
        if block:
            assert len(block) <= MAX_EXIF_BYTES, path
            assert exif_reads(block) < MAX_EXIF_READS / 100, path
            measured += 1
    assert measured > 20


@pytest.mark.parametrize(
    "block, at_least",
    [
        (exif_bomb(5_400), 5_400 * 999),
        (exif_bomb(1, kind=3, count=1)[:8] + b"\xff\xff", 65_535 * 4),  # entries past the end
        (exif_bomb(100, kind=2, count=2**31), 100 * 4),  # text is copied, not read value by value
    ],
    ids=["shared-values", "phantom-entries", "long-text"],
)
def test_exif_reads_counts_what_exifread_would_read(block, at_least):
    assert exif_reads(block) >= min(at_least, MAX_EXIF_READS)


def test_exif_reads_follows_an_ifd_loop_once():
    block = bytearray(exif_bomb(1, kind=3, count=1))
    block[8 + 2 + 12 : 8 + 2 + 12 + 4] = (8).to_bytes(4, "little")  # next IFD: itself

    assert exif_reads(bytes(block)) < 100


def test_a_progressive_jpeg_of_endless_scans_is_rejected_at_once(
    configured, extract, owner, tmp_path
):
    content = jpeg_scan_bomb(MAX_JPEG_SCANS + 50)

    reply, seconds = _extract(extract, _store(configured, tmp_path, content, owner))

    assert seconds < NOT_MINUTES
    assert reply["type"] == REJECTED
    assert "scans" in reply.data["reason"]


def test_real_progressive_jpegs_are_far_within_the_scan_limit(tmp_path):
    for mode, subsampling in (("RGB", 2), ("RGB", 0), ("L", -1), ("CMYK", -1)):
        out = io.BytesIO()
        image = PILImage.new(mode, (320, 240))
        image.save(out, "JPEG", progressive=True, subsampling=subsampling)
        assert jpeg_scans(out.getvalue()) <= 20, mode
    assert jpeg_scans(jpeg_scan_bomb(500)) > MAX_JPEG_SCANS


def test_a_png_of_megabytes_of_text_is_rejected_and_a_photos_text_read(
    configured, extract, owner, tmp_path
):
    bomb = png_with_text(6, 1_000_000)  # 6 MB of text in a few KB of file
    assert len(bomb) < 50_000
    photo = png_with_text(3, 20_000)  # what an edited photo's XMP and comments weigh

    rejected, _ = _extract(extract, _store(configured, tmp_path, bomb, owner))
    accepted, _ = _extract(extract, _store(configured, tmp_path, photo, owner))

    assert rejected["type"] == REJECTED
    assert "text metadata" in rejected.data["reason"]
    assert accepted["type"] == ACCEPTED


# --- ICC profiles ----------------------------------------------------------------------------


def _renditions(backend, extract, thumbnail, tmp_path, owner, content: bytes):
    data = _store(backend, tmp_path, content, owner)
    accepted, _ = _extract(extract, data)
    assert accepted["type"] == ACCEPTED, accepted.data
    reply = reply_event(post_event(thumbnail, event_for(accepted.data, ACCEPTED)))
    blobs = backend.blobs()
    copy = working_key(data["blobKey"])
    return blobs.get(reply.data["thumbnailKey"]), blobs.get(copy) if blobs.exists(copy) else None


def test_a_15_mb_colour_profile_is_not_copied_into_the_thumbnail(
    configured, extract, thumbnail, owner, tmp_path
):
    content = jpeg_with_icc(icc_profile(15 * 2**20))

    made, _ = _renditions(configured, extract, thumbnail, tmp_path, owner, content)

    assert len(made) < 50_000  # was 15 MB: the profile, copied
    with PILImage.open(io.BytesIO(made)) as image:
        assert len(image.info.get("icc_profile") or b"") <= MAX_KEPT_ICC_BYTES
        # The profile was applied, not lost: sRGB in, the same colour out.
        assert _mean(image) == pytest.approx((30, 140, 200), abs=3)


def test_a_heic_working_copy_gets_no_large_profile_either(
    configured, extract, thumbnail, owner, tmp_path
):
    out = io.BytesIO()
    PILImage.new("RGB", (2400, 1800), (30, 140, 200)).save(
        out, "HEIF", quality=60, icc_profile=icc_profile(2 * 2**20)
    )

    made, copy = _renditions(configured, extract, thumbnail, tmp_path, owner, out.getvalue())

    assert copy is not None and len(copy) < 200_000
    for rendition in (made, copy):
        with PILImage.open(io.BytesIO(rendition)) as image:
            assert "icc_profile" not in image.info
            assert _mean(image) == pytest.approx((30, 140, 200), abs=4)


def test_a_phones_small_profile_is_kept_byte_for_byte(
    configured, extract, thumbnail, owner, tmp_path
):
    original = (IMAGES / "objects/dog.jpg").read_bytes()
    with PILImage.open(IMAGES / "objects/dog.jpg") as image:
        profile = image.info["icc_profile"]

    made, _ = _renditions(configured, extract, thumbnail, tmp_path, owner, original)

    with PILImage.open(io.BytesIO(made)) as image:
        assert image.info["icc_profile"] == profile


def _mean(image: PILImage.Image) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(image.convert("RGB")).mean)


# --- pixels that fit the memory a step has per photo ------------------------------------------


def _photo(path: Path, kind: str, size: tuple[int, int]) -> Path:
    """A photo of `size` with real detail (encoders do not shortcut it), as `kind` says."""
    rng = np.random.default_rng(20261207)
    coarse = rng.integers(0, 255, (size[1] // 40, size[0] // 40, 3), dtype=np.uint8)
    image = PILImage.fromarray(coarse).resize(size, PILImage.Resampling.BILINEAR)
    options = {
        "jpeg-baseline": ("JPEG", "RGB", {"quality": 90}),
        "jpeg-progressive": ("JPEG", "RGB", {"quality": 90, "progressive": True}),
        "jpeg-progressive-full": ("JPEG", "CMYK", {"quality": 90, "progressive": True}),
        "png-opaque": ("PNG", "RGB", {"compress_level": 1}),
        "png-other": ("PNG", "LA", {"compress_level": 1}),
        "webp-any": ("WEBP", "RGBA", {"quality": 80, "method": 0}),
        "heif-opaque": ("HEIF", "RGB", {"quality": 50}),
        "heif-other": ("HEIF", "RGBA", {"quality": 50}),
    }
    format, mode, save = options[kind]
    image.convert(mode).save(path, format, **save)
    return path


KINDS = {
    "jpeg-baseline": ("JPEG", "baseline"),
    "jpeg-progressive": ("JPEG", "progressive"),
    "jpeg-progressive-full": ("JPEG", "progressive-full"),
    "png-opaque": ("PNG", "opaque"),
    "png-other": ("PNG", "other"),
    "webp-any": ("WEBP", "any"),
    "heif-opaque": ("HEIF", "opaque"),
    "heif-other": ("HEIF", "other"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_pixel_step_stays_within_what_the_budget_reckons(tmp_path, kind):
    """The worst variant of each format (CMYK progressive JPEG, LA PNG, RGBA HEIC...), through
    each pixel step's own decode, in a process of its own: the peak never exceeds what
    open_photo reckons for it (pixels x PEAK_BYTES_PER_PIXEL + the original's bytes)."""
    register_heif_opener()
    path = _photo(tmp_path / kind, kind, (2000, 1500))
    with PILImage.open(path) as image:
        per_pixel = peak_bytes_per_pixel(image)
    assert per_pixel == PEAK_BYTES_PER_PIXEL[KINDS[kind]]
    reckoned = 2000 * 1500 * per_pixel + path.stat().st_size

    measured = _peaks(path, tmp_path)

    for step, peak in measured.items():
        assert peak <= reckoned, (step, peak / 1e6, reckoned / 1e6)


def _peaks(path: Path, tmp_path: Path) -> dict[str, int]:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "IMAGEREC_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(ROOT / "tests/peak_memory.py"), str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "kind, refused", [("webp-any", True), ("heif-opaque", False), ("jpeg-baseline", False)]
)
def test_a_photo_over_the_memory_a_photo_may_use_is_rejected_naming_it(
    configured, extract, owner, tmp_path, monkeypatch, kind, refused
):
    # 1000x750 px: a WebP needs 13.5 MB to decode, a HEIC 6.8, a baseline JPEG 0.8.
    monkeypatch.setenv("IMAGEREC_PHOTO_MEMORY", str(10_000_000))
    imagerec.steps.settings.cache_clear()
    path = _photo(tmp_path / "photo", kind, (1000, 750))

    reply, _ = _extract(extract, put_original(configured, path, *owner))

    if refused:
        assert reply["type"] == REJECTED
        reason = reply.data["reason"]
        assert "1000×750" in reason and "a photo may use 10 MB" in reason, reason
        assert "megapixels" in reason
    else:
        assert reply["type"] == ACCEPTED, reply.data


def test_a_photo_over_the_memory_a_photo_may_use_gets_no_thumbnail_either(
    configured, extract, thumbnail, owner, tmp_path, monkeypatch
):
    """Accepted where there was room (another step's budget, or an outside emitter's event
    straight to make-thumbnail): refused, 422, and nothing written."""
    path = _photo(tmp_path / "photo", "webp-any", (1000, 750))
    accepted, _ = _extract(extract, put_original(configured, path, *owner))
    assert accepted["type"] == ACCEPTED
    monkeypatch.setenv("IMAGEREC_PHOTO_MEMORY", str(10_000_000))
    imagerec.steps.settings.cache_clear()

    response = post_event(thumbnail, event_for(accepted.data, ACCEPTED))

    assert response.status_code == 422, response.get_data(as_text=True)
    assert "a photo may use 10 MB" in response.get_data(as_text=True)
    assert not configured.blobs().exists(thumbnail_key(accepted.data["blobKey"]))


def test_the_memory_a_photo_may_use_is_the_limit_shared_by_the_requests(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")

    assert photo_memory({"THREADS": "4"}, tmp_path) == (2**30 - STEP_RESERVE) // 4
    assert photo_memory({"THREADS": "2"}, tmp_path) == (2**30 - STEP_RESERVE) // 2
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the machine's memory
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert photo_memory({"THREADS": "4"}, tmp_path) == (physical - STEP_RESERVE) // 4
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert memory_limit(v1) == 2**29


# What detect-objects holds before its first photo: TensorFlow and the model (890 MiB of RSS
# measured with the offline CenterNet, loaded and warmed), rounded up.
DETECTOR_RESERVE = 1024 * 2**20


def _quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def _step_budgets() -> dict[str, tuple[int, int, int]]:
    """Per pixel step in knative/base/steps.yaml: (memory limit, containerConcurrency, THREADS)."""
    budgets = {}
    for doc in yaml.safe_load_all((ROOT / "knative/base/steps.yaml").read_text()):
        if doc and doc["metadata"]["name"] in (
            "extract-metadata",
            "make-thumbnail",
            "detect-objects",
        ):
            spec = doc["spec"]["template"]["spec"]
            container = spec["containers"][0]
            threads = next(e["value"] for e in container["env"] if e["name"] == "THREADS")
            limit = _quantity(container["resources"]["limits"]["memory"])
            budgets[doc["metadata"]["name"]] = (limit, spec["containerConcurrency"], int(threads))
    return budgets


def test_the_manifests_budget_takes_phone_photos_and_refuses_the_reported_webp():
    budgets = _step_budgets()
    assert set(budgets) == {"extract-metadata", "make-thumbnail", "detect-objects"}
    for name, (_, concurrency, threads) in budgets.items():
        assert threads == concurrency, f"{name}: the budget divides by THREADS"
    limit, _, threads = budgets["extract-metadata"]
    per_photo = (limit - STEP_RESERVE) // threads
    # Where photos are judged has the least memory per photo; the steps after it have as much,
    # the detector less its model (DETECTOR_RESERVE).
    thumbnail_limit, _, thumbnail_threads = budgets["make-thumbnail"]
    assert (thumbnail_limit - STEP_RESERVE) // thumbnail_threads >= per_photo
    detect_limit, _, detect_threads = budgets["detect-objects"]
    assert (detect_limit - DETECTOR_RESERVE) // detect_threads >= per_photo

    def fits(megapixels: float, kind: tuple[str, str], megabytes: float) -> bool:
        return megapixels * 1e6 * PEAK_BYTES_PER_PIXEL[kind] + megabytes * 1e6 <= per_photo

    assert not fits(49, ("WEBP", "any"), 0.8)  # the reported 7000x7000 WebP
    assert fits(24.5, ("HEIF", "opaque"), 4)  # an iPhone 15's 24 MP HEIC
    assert fits(50, ("JPEG", "baseline"), 30)  # a camera's 50 MP JPEG, at the upload limit
    assert fits(24, ("JPEG", "progressive"), 12)
    assert fits(20, ("JPEG", "progressive-full"), 12)
    assert fits(12, ("WEBP", "any"), 6)
