"""detect-objects: finds objects in the original with a TensorFlow Hub detector.

Consumes dev.imagerec.image.thumbnailed and replies dev.imagerec.image.labelled: the incoming
data plus `detections`, `labels` and `model`. This is the only module that imports TensorFlow,
and it does so lazily, so every other step starts without it.

    functions-framework --source functions/detect_objects.py --target detect_objects
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import functions_framework
import numpy as np
from cloudevents.http import CloudEvent
from PIL import Image, ImageOps, UnidentifiedImageError

from imagerec.events import LABELLED, THUMBNAILED, BadEvent, event_data, new_event
from imagerec.formats import register_heif_opener
from imagerec.pixels import displayable
from imagerec.steps import Refused, Unavailable, blob_store, cloudevent_step, settings

log = logging.getLogger("imagerec.detect_objects")
register_heif_opener()

SOURCE = "/functions/detect-objects"
# The detector letterboxes to 512x512 itself, so more pixels only cost decoding time; but
# shrinking airport.jpg (1280 px) to 1024 dropped its airplane from 0.258 to 0.23-0.24, so
# only phone-sized photos are shrunk, by whole factors, to between MAX_SIDE and twice that.
MAX_SIDE = 2048

Detector = Callable[..., dict[str, Any]]
_detectors: dict[str, Detector] = {}
_loading = threading.Lock()


def _detect_objects(event: CloudEvent) -> CloudEvent:
    if event["type"] != THUMBNAILED:
        raise BadEvent(f"detect-objects takes {THUMBNAILED}, not {event['type']}")
    data = event_data(event)
    detector = load_detector(settings().detector_model)
    image = _decode(blob_store().get(data["blobKey"]))
    detections = detect(detector, image, settings().detection_threshold)
    labelled = {
        **data,
        "detections": detections,
        "labels": best_per_label(detections),
        "model": settings().detector_model,
    }
    return new_event(LABELLED, SOURCE, labelled, subject=data["imageId"])


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
                loaded = hub.load(model).signatures["default"]
                # The first call optimises the graph (0.4-0.7 s): pay it before taking traffic.
                loaded(tf.zeros([1, 64, 64, 3], tf.float32))
            except Exception as e:
                log.warning("cannot load detector %s: %s", model, e)
                message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise Unavailable(f"object detector {model} cannot be loaded: {message}") from e
            _detectors[model] = loaded
            log.info("detector %s loaded", model)
    return _detectors[model]


def detector_ready() -> bool:
    """The readiness probe: ready once the configured detector is loaded and warm.

    The probe answers at once (Knative's probe times out after a second or so); the first
    probe starts loading in the background, and a later one finds it done.
    """
    model = settings().detector_model
    if model in _detectors:
        return True
    if not _loading.locked():
        threading.Thread(target=_load_quietly, args=(model,), daemon=True).start()
    return False


def _load_quietly(model: str) -> None:
    with contextlib.suppress(Unavailable):  # logged; the next probe or request tries again
        load_detector(model)


def detect(detector: Detector, image: Image.Image, threshold: float) -> list[dict[str, Any]]:
    """Detections scoring at least `threshold`, best first, boxes as [ymin, xmin, ymax, xmax].

    Threshold, measured on shared/testdata/images/objects (benchmarks/run.py, "threshold"):
    the weakest prominent object is airport.jpg's airplane at 0.258 (the model README's list
    agrees: its real objects score 0.25-0.77; the dog in dog.jpg 0.38, the truck 0.29), so
    the default 0.25 is the highest round value that keeps every one of them. Lowering it
    buys nothing and lets in wrong labels that cluster at 0.20-0.23 (Tie and Handbag on
    bus.jpg, Potted plant and Parking meter on dog.jpg, Dog on eagle.jpg). Some wrong labels
    still score above it (airport.jpg: Clock 0.34, Person 0.33; horses.jpg: Cow 0.27 on a
    horse's box), so no threshold separates this model's right and wrong labels completely.
    """
    tf, _ = _import_tensorflow()
    pixels = np.asarray(image, dtype=np.float32)[np.newaxis, ...] / 255.0
    result = detector(tf.constant(pixels))
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
    """The original as the viewer sees it: orientation applied, RGB, about MAX_SIDE or less."""
    try:
        image = Image.open(io.BytesIO(original))
        if image.width * image.height > settings().max_image_pixels:
            raise Refused(f"the original has {image.width}x{image.height} pixels, too many")
        # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, no smaller than asked.
        image.draft("RGB", _shrunk(image.size, MAX_SIDE))
        image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise Refused(f"the original cannot be decoded: {e}") from e
    factor = max(image.size) // MAX_SIDE
    if factor > 1:  # what draft() could not shrink (PNG, WebP, HEIC): a cheap box filter
        image = image.reduce(factor)
    return displayable(image).convert("RGB")


def _shrunk(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _import_tensorflow():
    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow"], sys.modules["tensorflow_hub"]
    # TensorFlow and absl write their start-up chatter straight to fd 2 (docs/toolchain.md §1).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf
        import tensorflow_hub as hub
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return tf, hub


detect_objects = functions_framework.http(cloudevent_step(_detect_objects, ready=detector_ready))
