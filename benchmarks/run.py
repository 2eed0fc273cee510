"""Benchmarks for the workflow steps, each a ratio against a baseline measured in the same run
(so the figures compare across machines), plus the measurement behind the detection threshold.

    .venv/bin/python benchmarks/run.py          (make bench)

Needs the shared offline detector (../shared/models) and test photos (../shared/testdata);
IMAGEREC_SHARED points elsewhere. Not run in CI.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGEREC_SHARED", ROOT.parent / "shared")).resolve()
OBJECTS = SHARED / "testdata" / "images"
MODEL = SHARED / "models" / "centernet-coco-tfhub-style"
THUMBNAIL_SIZE = 256
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35)

sys.path.insert(0, str(ROOT))
os.environ.setdefault("IMAGEREC_DETECTOR_MODEL", str(MODEL))

from functions import detect_objects  # noqa: E402  (after the model is configured)


def main() -> None:
    photos = json.loads((OBJECTS / "MANIFEST.json").read_text())["objects"]
    detector = cold_and_warm_inference(photos)
    thumbnail_draft_versus_full_decode()
    threshold_measurement(detector, photos)


def cold_and_warm_inference(photos: list[dict]) -> detect_objects.Detector:
    section("detect-objects: warm inference per image vs. the first (cold) inference")
    tf, hub = detect_objects._import_tensorflow()
    started = time.perf_counter()
    detector = hub.load(str(MODEL)).signatures["default"]
    load = time.perf_counter() - started
    images = {p["file"]: decode(p["file"]) for p in photos}
    first = images[photos[0]["file"]]
    cold = timed(lambda: detect_objects.detect(detector, first, 0.0))
    print(
        f"  model load: {load * 1000:.0f} ms; cold inference ({photos[0]['file']}): "
        f"{cold * 1000:.0f} ms = baseline 1.00"
    )
    warmed = detect_objects.load_detector(str(MODEL))  # as the step loads it: warmed up
    after_warm_up = timed(lambda: detect_objects.detect(warmed, first, 0.0))
    print(
        f"  first request after the step's warm-up: {after_warm_up * 1000:.0f} ms   "
        f"ratio {after_warm_up / cold:5.3f}"
    )
    for name, image in images.items():
        warm = median_time(lambda image=image: detect_objects.detect(detector, image, 0.0), 10)
        size = "x".join(map(str, image.size))
        print(f"  {name:22} {size:>9}  warm {warm * 1000:6.1f} ms  ratio {warm / cold:5.3f}")
    return detector


def thumbnail_draft_versus_full_decode() -> None:
    section("make-thumbnail: JPEG draft() decoding vs. a full decode, large photo")
    with Image.open(OBJECTS / "objects" / "kite.jpg") as photo:
        big = photo.convert("RGB").resize((photo.width * 4, photo.height * 4), Image.BICUBIC)
    out = io.BytesIO()
    big.save(out, "JPEG", quality=90)
    original = out.getvalue()
    print(
        f"  original: {big.width}x{big.height} JPEG, {len(original) / 2**20:.1f} MiB "
        f"(objects/kite.jpg upscaled 4x in memory)"
    )

    def full() -> Image.Image:
        with Image.open(io.BytesIO(original)) as image:
            image.load()  # thumbnail() alone would draft() by itself
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
            return image

    def draft() -> Image.Image:
        with Image.open(io.BytesIO(original)) as image:
            image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
            return image

    baseline = median_time(full, 9)
    drafted = median_time(draft, 9)
    print(f"  full decode: {baseline * 1000:7.1f} ms = baseline 1.00")
    print(f"  draft():     {drafted * 1000:7.1f} ms   ratio {drafted / baseline:5.3f}")
    detect_side = median_time(lambda: detect_objects._decode(original), 9)
    print(
        f"  detect-objects' decode (draft to >= {detect_objects.MAX_SIDE} px): "
        f"{detect_side * 1000:7.1f} ms   ratio {detect_side / baseline:5.3f}"
    )


def threshold_measurement(detector: detect_objects.Detector, photos: list[dict]) -> None:
    section("detection threshold: best score of each prominent object vs. the best false label")
    lowest_true, false_scores, lost_at = 1.0, [], {t: [] for t in THRESHOLDS}
    for photo in photos:
        detections = detect_objects.detect(detector, decode(photo["file"]), 0.0)
        best = {x["label"].lower(): x["score"] for x in detect_objects.best_per_label(detections)}
        present = set()
        prominent = []
        for thing in photo["visible_objects"]:
            names = {thing["coco"].lower(), thing["openimages"].lower()}
            present |= names
            if thing["prominent"]:
                score = max(best.get(name, 0.0) for name in names)
                prominent.append((thing["coco"], score))
                lowest_true = min(lowest_true, score)
                for t in THRESHOLDS:
                    if score < t:
                        lost_at[t].append(f"{photo['file']}:{thing['coco']}")
        false = sorted(((s, n) for n, s in best.items() if n not in present), reverse=True)
        false_scores += [(s, n, photo["file"]) for s, n in false]
        objects = ", ".join(f"{name} {score:.3f}" for name, score in prominent)
        worst = ", ".join(f"{n} {s:.3f}" for s, n in false[:2]) or "none"
        print(f"  {photo['file']:22} prominent: {objects:40} best false: {worst}")
    print(f"  weakest prominent object: {lowest_true:.3f}")
    for t in THRESHOLDS:
        above = [f"{n}@{f.split('/')[-1]}" for s, n, f in false_scores if s >= t]
        print(
            f"  threshold {t:.2f}: prominent objects lost {len(lost_at[t])} "
            f"{lost_at[t] or ''}; false labels kept {len(above)} {above}"
        )


def decode(file: str) -> Image.Image:
    return detect_objects._decode((OBJECTS / file).read_bytes())


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def median_time(work: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(work) for _ in range(repeat))


def section(title: str) -> None:
    print(f"\n{title}")


if __name__ == "__main__":
    main()
