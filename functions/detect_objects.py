"""detect-objects: finds objects in the original with a TensorFlow Hub detector.

Consumes dev.imagerec.image.thumbnailed and replies dev.imagerec.image.labelled: the incoming
data plus `detections`, `labels` and `model`. This is the only module that imports TensorFlow,
and it does so lazily, so every other step starts without it.

    functions-framework --source functions/detect_objects.py --target detect_objects
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import functions_framework
import numpy as np
from cloudevents.http import CloudEvent
from PIL import Image, ImageOps

from imagerec.blobstore import BlobNotFound, has_working_copy, working_key
from imagerec.cpus import tensorflow_threads, usable_cpus
from imagerec.events import LABELLED, THUMBNAILED, BadEvent, event_data, new_event
from imagerec.formats import register_heif_opener, sniff_format
from imagerec.images import stored_image
from imagerec.pixels import Undecodable, displayable, load_photo, open_photo
from imagerec.steps import (
    Refused,
    Unavailable,
    blob_store,
    cloudevent_step,
    db_session,
    settings,
)

log = logging.getLogger("imagerec.detect_objects")
register_heif_opener()

SOURCE = "/functions/detect-objects"
# The detector letterboxes to 512x512 itself, so more pixels only cost decoding and copying.
# But every resampling before its own costs small objects their score: airport.jpg's airplane
# scores 0.258 at its 1280 px, 0.21-0.24 shrunk to 1024 or 768 by any Pillow filter
# (benchmarks/threshold.py). So photos are only shrunk where the JPEG decoder does it for free
# (DCT scaling by 1/2, 1/4, 1/8, never below MAX_SIDE), or, past twice that, by whole factors.
MAX_SIDE = 768

Detector = Callable[..., dict[str, Any]]
_ORIENTATION = 0x0112
_detectors: dict[str, Detector] = {}
_loading = threading.Lock()


def _detect_objects(event: CloudEvent) -> CloudEvent:
    if event["type"] != THUMBNAILED:
        raise BadEvent(f"detect-objects takes {THUMBNAILED}, not {event['type']}")
    data = event_data(event)
    # The row says which original this photo is: an event naming another (someone else's
    # photo, or one deleted since) is refused before anything is read or labelled.
    with db_session() as session:
        original_key = stored_image(session, data).blob_key
    detector = load_detector(settings().detector_model)
    image = _decode(_pixels_source(original_key))
    detections = detect(detector, image, settings().detection_threshold)
    labelled = {
        **data,
        "detections": detections,
        "labels": best_per_label(detections),
        "model": settings().detector_model,
    }
    return new_event(LABELLED, SOURCE, labelled, subject=data["imageId"])


def _pixels_source(original: str) -> bytes:
    """The bytes to decode: make-thumbnail's working copy (a JPEG) where the original has one,
    as it decodes for a fraction of the original's cost; else, or if it is gone, the original."""
    blobs = blob_store()
    if has_working_copy(original):
        try:
            return blobs.get(working_key(original))
        except BlobNotFound:
            log.info("no working copy of %s; decoding the original", original)
    return blobs.get(original)


def load_detector(model: str) -> Detector:
    """The detector for `model`, loaded and warmed once per process.

    A failed load is not remembered: the next request tries again, so a model that appears
    later (a volume mounted late, TF Hub reachable again) is picked up without a restart.
    """
    detector = _detectors.get(model)
    if detector is not None:
        return detector
    with _loading:
        if model not in _detectors:
            try:
                tf, hub = _import_tensorflow()
                loaded = _uint8_input(tf, hub.load(model).signatures["default"])
                # The first call optimises the graph (0.4-0.7 s): pay it before taking traffic.
                loaded(tf.zeros([64, 64, 3], tf.uint8))
            except Exception as e:
                log.warning("cannot load detector %s: %s", model, e)
                message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise Unavailable(f"object detector {model} cannot be loaded: {message}") from e
            _detectors[model] = loaded
            log.info("detector %s loaded", model)
    return _detectors[model]


def detector_ready() -> dict[str, Any] | bool:
    """The readiness probe: ready once the configured detector is loaded and warm, saying
    how TensorFlow runs (its thread pools, as sized from the container's CPU limit).

    The probe answers at once (Knative's probe times out after a second or so); the first
    probe starts loading in the background, and a later one finds it done.
    """
    model = settings().detector_model
    if model in _detectors:
        tf, _ = _import_tensorflow()
        return {
            "status": "ready",
            "usableCpus": usable_cpus(),
            "intraOpThreads": tf.config.threading.get_intra_op_parallelism_threads(),
            "interOpThreads": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    if not _loading.locked():
        threading.Thread(target=_load_quietly, args=(model,), daemon=True).start()
    return False


def _load_quietly(model: str) -> None:
    with contextlib.suppress(Unavailable):  # logged; the next probe or request tries again
        load_detector(model)


def detect(detector: Detector, image: Image.Image, threshold: float) -> list[dict[str, Any]]:
    """Detections in an RGB image (as `_decode` makes it) scoring at least `threshold`, best
    first, boxes as [ymin, xmin, ymax, xmax].

    Threshold, measured on shared/testdata/images/objects (benchmarks/threshold.py):
    the weakest prominent object is airport.jpg's airplane at 0.258 (the model README's list
    agrees: its real objects score 0.25-0.77; the dog in dog.jpg 0.38, the truck 0.29), so
    the default 0.25 is the highest round value that keeps every one of them. Lowering it
    buys nothing and lets in wrong labels that cluster at 0.20-0.23 (Tie and Handbag on
    bus.jpg, Potted plant and Parking meter on dog.jpg, Dog on eagle.jpg). Some wrong labels
    still score above it (airport.jpg: Clock 0.34, Person 0.33; horses.jpg: Cow 0.27 on a
    horse's box), so no threshold separates this model's right and wrong labels completely.
    """
    result = detector(np.asarray(image))
    detections = []
    for label, score, box in zip(
        result["detection_class_entities"].numpy(),
        result["detection_scores"].numpy(),
        result["detection_boxes"].numpy(),
        strict=True,
    ):
        if float(score) < threshold:
            continue
        detections.append(
            {
                "label": label.decode("utf-8", errors="replace"),
                # Rounded so that the same photo gives byte-identical events and rows.
                "score": round(float(score), 4),
                "box": [round(min(max(float(v), 0.0), 1.0), 4) for v in box],
            }
        )
    detections.sort(key=lambda d: (-d["score"], d["label"], d["box"]))
    return detections


def best_per_label(detections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[str, float] = {}
    for d in detections:
        best[d["label"]] = max(best.get(d["label"], 0.0), d["score"])
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return [{"label": label, "score": score} for label, score in ranked]


def _decode(original: bytes) -> Image.Image:
    """The original as the viewer sees it: upright, RGB, shrunk towards MAX_SIDE pixels a
    side where that is nearly free (see MAX_SIDE). Every step here is skipped when it has
    nothing to do: each would copy the whole image."""
    kind = sniff_format(original[:32])
    if kind is None:
        raise Refused("the original is not in a supported format")
    try:
        image = open_photo(original, kind, settings())
        # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, no smaller than asked.
        image.draft("RGB", _shrunk(image.size, MAX_SIDE))
        load_photo(image)
    except Undecodable as e:
        raise Refused(str(e)) from e
    factor = max(image.size) // MAX_SIDE
    if factor > 1:  # what draft() could not shrink (PNG, WebP, HEIC): a cheap box filter
        image = displayable(image).reduce(factor)  # 16-bit greyscale first: reduce clips it
    # Turned after shrinking, so fewer pixels move; HEIF openers have already applied theirs.
    if image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    image = displayable(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _shrunk(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _uint8_input(tf, signature: Detector) -> Detector:
    """The model's signature taking one HxWx3 uint8 image: the cast to float32 in [0, 1] and
    the batch axis happen inside the graph, so Python hands over the decoded bytes as they
    are (a float32 copy of a photo is four times its size, made twice on the Python side)."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def detector(pixels):
        return signature(tf.image.convert_image_dtype(pixels, tf.float32)[tf.newaxis, ...])

    return detector


def _import_tensorflow():
    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow"], sys.modules["tensorflow_hub"]
    # TensorFlow and absl write their start-up chatter straight to fd 2 (docs/toolchain.md §1).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        # psycopg2 first: with TensorFlow loaded before it, libpq's first TLS handshake to
        # PostgreSQL segfaults (docs/toolchain.md §5), and this step reads the photo's row.
        import psycopg2  # noqa: F401
        import tensorflow as tf
        import tensorflow_hub as hub
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    # Before any op runs (later calls are refused): TensorFlow would size its pools from the
    # host's cores, not the container's CPU limit, and oversubscribe the quota.
    intra_op, inter_op = tensorflow_threads()
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return tf, hub


detect_objects = functions_framework.http(cloudevent_step(_detect_objects, ready=detector_ready))
