"""The detection threshold's evidence: each prominent object's best score on the photos with
known objects, as the step sees them (its decode, its input size), against the false labels."""

from __future__ import annotations

from benchmarks import photos
from benchmarks.figures import Figure, Report

THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35)


def threshold_table(report: Report, smoke: bool = False) -> None:
    from functions import detect_objects
    from imagerec.config import load_settings

    configured = load_settings().detection_threshold
    detector = detect_objects.load_detector(str(photos.MODEL))
    objects = photos.object_photos()[: 2 if smoke else None]
    lowest_true, false_scores = 1.0, []
    lost_at: dict[float, list[str]] = {t: [] for t in {*THRESHOLDS, configured}}
    rows = {}
    for photo in objects:
        image = detect_objects._decode(photos.read(photo["file"]))
        detections = detect_objects.detect(detector, image, 0.0)
        best = {x["label"].lower(): x["score"] for x in detect_objects.best_per_label(detections)}
        present, prominent = set(), {}
        for thing in photo["visible_objects"]:
            names = {thing["coco"].lower(), thing["openimages"].lower()}
            present |= names
            if thing["prominent"]:
                score = max(best.get(name, 0.0) for name in names)
                prominent[thing["coco"]] = score
                lowest_true = min(lowest_true, score)
                for t in lost_at:
                    if score < t:
                        lost_at[t].append(f"{photo['file']}:{thing['coco']}")
        false = sorted(((s, n) for n, s in best.items() if n not in present), reverse=True)
        false_scores += [(s, n, photo["file"]) for s, n in false]
        rows[photo["file"]] = {
            "prominent": prominent,
            "best_false": {n: s for s, n in false[:3]},
            "input_size": list(image.size),
        }
    table = {
        f"{t:.2f}": {
            "prominent_lost": lost_at[t],
            "false_kept": [f"{n}@{f}" for s, n, f in false_scores if s >= t],
        }
        for t in sorted(lost_at)
    }
    report.add(
        Figure(
            "labels.prominent_objects_lost",
            float(len(lost_at[configured])),
            "",
            f"prominent objects scoring under the threshold {configured}, "
            f"{len(objects)} photos with known objects",
            ("==", 0),
            f"weakest prominent object scores {lowest_true:.3f}",
            {"photos": rows, "thresholds": table},
        )
    )
    report.add(
        Figure(
            "labels.false_labels_kept",
            float(len(table[f"{configured:.2f}"]["false_kept"])),
            "",
            f"labels not in the photo scoring at least {configured}",
            None,
            ", ".join(table[f"{configured:.2f}"]["false_kept"]) or "none",
        )
    )


def print_table(report: Report) -> None:
    figure = report.figures["labels.prominent_objects_lost"]
    print("\nthreshold table (best score of each prominent object; best false labels)")
    for name, row in figure.detail["photos"].items():
        objects = ", ".join(f"{k} {v:.3f}" for k, v in row["prominent"].items())
        false = ", ".join(f"{k} {v:.3f}" for k, v in row["best_false"].items()) or "none"
        print(f"  {name:22} {objects:44} false: {false}")
    for t, row in figure.detail["thresholds"].items():
        print(
            f"  threshold {t}: prominent lost {len(row['prominent_lost'])} "
            f"{row['prominent_lost'] or ''}; false kept {len(row['false_kept'])}"
        )
