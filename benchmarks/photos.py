"""The shared test photos the benchmark uses, and where the shared model lives."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGEREC_SHARED", ROOT.parent / "shared")).resolve()
IMAGES = SHARED / "testdata" / "images"
MODEL = SHARED / "models" / "centernet-coco-tfhub-style"
# Phone and camera photos of 2-12 MP, and the HEIC: the sizes people really upload.
PHONES = (
    "exif/iphone6_gps.jpg",
    "exif/nokia_8_3_gps.jpg",
    "exif/samsung_s7_gps.jpg",
    "exif/olympus_corrupt_scan.jpg",
    "exif/canon_sx60_orient6.jpg",
    "exif/gt5_empty_gps_ifd.jpg",
    "exif/iphone11_gps.heic",
)
SMOKE = ("objects/dog.jpg", "exif/canon_sx60_orient6.jpg", "exif/iphone11_gps.heic")


def manifest() -> dict:
    return json.loads((IMAGES / "MANIFEST.json").read_text())


def object_photos() -> list[dict]:
    """The photos with known visible objects (MANIFEST.json "objects")."""
    return manifest()["objects"]


def step_photos(smoke: bool = False) -> list[str]:
    """Every object photo and every phone photo (paths relative to IMAGES)."""
    if smoke:
        return list(SMOKE)
    return [p["file"] for p in object_photos()] + list(PHONES)


def read(name: str) -> bytes:
    return (IMAGES / name).read_bytes()
