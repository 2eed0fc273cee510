"""Each step's own work on one photo, against the bare library calls it cannot do without.

Measured in this process, interleaved with its baseline (benchmarks/timing.py), by CPU time:
steady under load from other processes, where wall-clock time is not.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from PIL import Image, ImageOps

from benchmarks import photos
from benchmarks.figures import Figure, Report
from benchmarks.timing import interleaved, ratio
from imagerec.blobstore import has_working_copy

THUMBNAIL_SIZE = 256
# The detector's own input resolution: CenterNet 512x512 letterboxes whatever it gets to this.
MODEL_INPUT = 512


def thumbnail(report: Report, names: list[str], repeat: int) -> None:
    from functions import make_thumbnail

    vips = _libvips()
    per_photo: dict[str, dict[str, float]] = {}
    for name in names:
        original = photos.read(name)
        working = has_working_copy(name)
        works: dict[str, Callable[[], object]] = {
            # With the HEIC's working copy, made from the same decode, as the step does.
            "step": lambda o=original, w=working: make_thumbnail._renditions(o, THUMBNAIL_SIZE, w),
            "naive": lambda o=original: _naive_pillow_thumbnail(o),
        }
        if vips is not None and _vips_opens(vips, original):
            works["libvips"] = lambda o=original: _vips_thumbnail(vips, o)
        costs = interleaved(works, repeat)
        row = {"step_cpu_ms": costs["step"].cpu * 1000, "naive_cpu_ms": costs["naive"].cpu * 1000}
        row["vs_naive"] = ratio(costs["step"].cpu, costs["naive"].cpu)
        if "libvips" in costs:
            row["libvips_cpu_ms"] = costs["libvips"].cpu * 1000
            row["vs_libvips"] = ratio(costs["step"].cpu, costs["libvips"].cpu)
        per_photo[name] = row
    against_vips = [r["vs_libvips"] for r in per_photo.values() if "vs_libvips" in r]
    report.add(
        Figure(
            "thumbnail.vs_libvips.worst",
            max(against_vips) if against_vips else None,
            "x",
            "make-thumbnail CPU / libvips thumbnail_buffer+jpegsave, worst photo",
            ("<=", 1.0),
            "pyvips thumbnail_buffer(256) + JPEG Q85, same photo"
            + ("" if vips else " (pyvips not installed: pip install -e '.[bench]')"),
            {"photos": per_photo},
        )
    )
    report.add(
        Figure(
            "thumbnail.vs_naive_pillow.worst",
            max(r["vs_naive"] for r in per_photo.values()),
            "x",
            "make-thumbnail CPU / naive Pillow, worst photo",
            None,
            "Pillow: full decode, exif_transpose, convert, thumbnail, save",
        )
    )


def _naive_pillow_thumbnail(original: bytes) -> bytes:
    with Image.open(io.BytesIO(original)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image).convert("RGB")
        upright.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=85)
    return out.getvalue()


def _libvips():
    try:
        import pyvips
    except (ImportError, OSError):
        return None
    logging.getLogger("pyvips").setLevel(logging.CRITICAL)  # it logs every tile at INFO
    return pyvips


def _vips_opens(vips, original: bytes) -> bool:
    """pyvips-binary's libheif has no HEVC decoder: a HEIC has no libvips baseline."""
    try:
        _vips_thumbnail(vips, original, fail_on="error")
    except vips.Error:
        return False
    return True


def _vips_thumbnail(vips, original: bytes, fail_on: str = "none") -> bytes:
    image = vips.Image.thumbnail_buffer(
        original, THUMBNAIL_SIZE, height=THUMBNAIL_SIZE, option_string=f"fail_on={fail_on}"
    )
    return image.jpegsave_buffer(Q=85, optimize_coding=True)


def metadata(report: Report, names: list[str], repeat: int) -> None:
    from functions import extract_metadata

    per_photo = {}
    for name in names:
        original = photos.read(name)
        costs = interleaved(
            {
                "step": lambda o=original: extract_metadata._metadata(o),
                "bare": lambda o=original: _bare_metadata(o),
            },
            repeat,
        )
        per_photo[name] = {
            "step_cpu_ms": costs["step"].cpu * 1000,
            "bare_cpu_ms": costs["bare"].cpu * 1000,
            "ratio": ratio(costs["step"].cpu, costs["bare"].cpu),
        }
    report.add(
        Figure(
            "metadata.vs_bare.worst",
            max(r["ratio"] for r in per_photo.values()),
            "x",
            "extract-metadata's work (validate + EXIF + hash) CPU / bare calls, worst photo",
            ("<=", 1.5),
            "exifread.process_file + Pillow decode at 1/8 scale (JPEG draft; others in full)",
            {"photos": per_photo},
        )
    )


def _bare_metadata(original: bytes) -> None:
    import exifread

    exifread.process_file(io.BytesIO(original), details=False)
    with Image.open(io.BytesIO(original)) as image:
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


def detection(report: Report, names: list[str], repeat: int) -> float:
    """Returns the bare model call's median CPU seconds over `names` (the floor per photo)."""
    import numpy as np

    from functions import detect_objects, make_thumbnail

    tf, hub = detect_objects._import_tensorflow()
    detector = detect_objects.load_detector(str(photos.MODEL))
    # The model's own signature, as TF Hub serves it: float32 [1, h, w, 3] in [0, 1].
    model = hub.load(str(photos.MODEL)).signatures["default"]
    per_photo = {}
    for name in names:
        original = photos.read(name)
        tensor = tf.constant(_model_input(original, np)[np.newaxis, ...])
        if has_working_copy(name):  # what the step reads: make-thumbnail's JPEG of the HEIC
            original = make_thumbnail._renditions(original, THUMBNAIL_SIZE, True)[1]
        costs = interleaved(
            {
                "step": lambda o=original: _step_detection(detect_objects, detector, o),
                "bare": lambda t=tensor: model(t),
                "decode": lambda o=original: _bare_decode(o, detect_objects.MAX_SIDE),
            },
            repeat,
        )
        per_photo[name] = {
            "step_cpu_ms": costs["step"].cpu * 1000,
            "bare_cpu_ms": costs["bare"].cpu * 1000,
            "decode_cpu_ms": costs["decode"].cpu * 1000,
            "step_wall_ms": costs["step"].wall * 1000,
            "bare_wall_ms": costs["bare"].wall * 1000,
            "ratio": ratio(costs["step"].cpu, costs["bare"].cpu),
            "vs_decode_and_model": ratio(
                costs["step"].cpu, costs["decode"].cpu + costs["bare"].cpu
            ),
        }
    report.add(
        Figure(
            "detect.vs_bare_model.worst",
            max(r["ratio"] for r in per_photo.values()),
            "x",
            "detect-objects warm (decode + model + labels) CPU / bare model call, worst photo",
            ("<=", 1.25),
            f"detector(float32 tensor of the photo pre-decoded at <= {MODEL_INPUT} px)",
            {"photos": per_photo},
        )
    )
    # The median over the photos, not the worst: the model call alone varies by +-10% between
    # interleaved runs, so the worst of 14 ratios measures that noise more than the step.
    against_floor = sorted(r["vs_decode_and_model"] for r in per_photo.values())
    report.add(
        Figure(
            "detect.vs_decode_and_model.median",
            against_floor[len(against_floor) // 2],
            "x",
            "detect-objects warm CPU / (bare decode of its input + bare model call), median "
            "photo: what the step adds to the two calls it cannot do without",
            ("<=", 1.1),
            f"Pillow open + draft to >= {detect_objects.MAX_SIDE} px + load, then "
            f"detector(float32 tensor at <= {MODEL_INPUT} px)",
            {"worst": against_floor[-1]},
        )
    )
    bare = sorted(r["bare_cpu_ms"] for r in per_photo.values())
    return bare[len(bare) // 2] / 1000


def _step_detection(detect_objects, detector, original: bytes) -> object:
    image = detect_objects._decode(original)
    return detect_objects.detect(detector, image, 0.25)


def _bare_decode(original: bytes, longest: int) -> Image.Image:
    """Decoding the file at the smallest scale libjpeg offers that keeps `longest` pixels a
    side: the entropy decoding of every coefficient is paid at any scale, so a 10 MP phone
    JPEG costs 16-28 CPU-ms here however small the result."""
    image = Image.open(io.BytesIO(original))
    scale = min(1.0, longest / max(image.size))
    image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
    image.load()
    return image


def _model_input(original: bytes, np):
    """The photo upright, RGB, shrunk to the model's input size, as float32 in [0, 1]."""
    with Image.open(io.BytesIO(original)) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    upright.thumbnail((MODEL_INPUT, MODEL_INPUT), Image.Resampling.BILINEAR)
    return np.asarray(upright, dtype=np.float32) / 255.0
