"""Puts the detector's SavedModel into a folder, checked: the Dockerfile's `model` stage runs it.

    python fetch_model.py SOURCE DEST

SOURCE is a TF Hub handle (https://tfhub.dev/..., which now redirects to Kaggle; fetched with
tensorflow_hub, so the build needs the network) or a local SavedModel folder. DEST must not
exist yet. The copy is then loaded the way functions/detect_objects.py loads its model
(`hub.load(path).signatures["default"]`, warmed with one 64x64 image) and must answer with the
outputs the step reads; otherwise the build fails here, not on a cluster without egress.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

# What functions/detect_objects.py `detect` reads from the signature's answer.
OUTPUTS = ("detection_class_entities", "detection_scores", "detection_boxes")


class ModelError(Exception):
    """A source that does not give a usable detector; the message says why."""


def _tensorflow() -> tuple[Any, Any]:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        import tensorflow_hub as hub
    except ImportError as e:
        raise ModelError(
            f"{e.name} is not installed: build the detector with --build-arg EXTRAS=detector"
        ) from e
    return tf, hub


def resolve(source: str) -> Path:
    """A local folder holding the SavedModel named by `source`."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    if "://" not in source:
        raise ModelError(f"{source} is neither a folder nor a TF Hub handle")
    _, hub = _tensorflow()
    try:
        return Path(hub.resolve(source))
    except Exception as e:  # network, redirects, archive: all end the build the same way
        raise ModelError(f"cannot fetch {source}: {e}") from e


def check(folder: Path) -> list[str]:
    """Loads `folder` as the step does and returns the labels of a blank image's answer."""
    if not (folder / "saved_model.pb").is_file():
        raise ModelError(f"{folder} holds no saved_model.pb")
    tf, hub = _tensorflow()
    try:
        detector = hub.load(str(folder)).signatures["default"]
    except KeyError as e:
        raise ModelError(f"{folder} has no 'default' signature") from e
    result = detector(tf.zeros([1, 64, 64, 3], tf.float32))
    missing = [name for name in OUTPUTS if name not in result]
    if missing:
        raise ModelError(f"{folder}: the signature does not answer {', '.join(missing)}")
    return [label.decode() for label in result["detection_class_entities"].numpy()]


def fetch(source: str, destination: Path) -> Path:
    if destination.exists():
        raise ModelError(f"{destination} exists already")
    shutil.copytree(resolve(source), destination)
    check(destination)
    return destination


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        folder = fetch(argv[0], Path(argv[1]))
    except ModelError as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return 1
    print(f"fetch_model: {argv[0]} -> {folder}, signature 'default' checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
