"""Configuration from the environment; the embedded default needs none of it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imagerec.memory import photo_memory
from imagerec.states import Patience

DEFAULT_DETECTOR_MODEL = "https://tfhub.dev/google/openimages_v4/ssd/mobilenet_v2/1"
# How long a photo may sit in uploaded/processing while Knative may still be retrying its work:
# the retry budget of knative/'s longest path, every attempt of every hop timing out, plus a
# margin (workflows.manifests.stuck_threshold; tests/test_reconciler.py fails when the manifests
# change it: put the figure it prints here).
DEFAULT_STUCK_AFTER_SECONDS = 12017.0
# How long a photo may sit in uploaded, untouched by any step, while Knative may still be
# working on the first hop (to extract-metadata, which moves it to processing on first touch):
# that hop's call and dead-letter legs, every attempt timing out, plus the margin
# (workflows.manifests.untouched_threshold; tests/test_reconciler.py checks the figure).
DEFAULT_UNTOUCHED_AFTER_SECONDS = 1022.0


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    blob_url: str
    sink: str | None
    detector_model: str
    # Scores of the offline CenterNet model are modest (a true dog scores 0.37), so the
    # default keeps real objects of shared/testdata/images/objects while dropping noise
    # (an empty image peaks at 0.012); see functions/detect_objects.py.
    detection_threshold: float
    thumbnail_size: int
    max_image_pixels: int
    max_upload_bytes: int
    # Bytes one photo may use while a step decodes it (imagerec.memory); what a photo's pixels
    # need is imagerec.pixels' to judge.
    photo_memory: int
    stuck_after_seconds: float
    untouched_after_seconds: float

    @property
    def patience(self) -> Patience:
        """When the reconciler counts a photo's work as lost (imagerec.states); an untouched
        upload never waits longer than a stuck photo would."""
        return Patience(
            uploaded=min(self.untouched_after_seconds, self.stuck_after_seconds),
            processing=self.stuck_after_seconds,
        )

    @property
    def secret_key(self) -> str:
        """IMAGEREC_SECRET_KEY, else a key generated once and kept in the data folder."""
        from_env = os.environ.get("IMAGEREC_SECRET_KEY")
        if from_env:
            return from_env
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("IMAGEREC_DATA_DIR") or Path.cwd() / ".imagerec").resolve()
    return Settings(
        data_dir=data_dir,
        database_url=env.get("IMAGEREC_DATABASE_URL") or f"sqlite:///{data_dir / 'imagerec.db'}",
        blob_url=env.get("IMAGEREC_BLOB_URL") or f"file://{data_dir / 'blobs'}",
        sink=env.get("K_SINK") or None,
        detector_model=env.get("IMAGEREC_DETECTOR_MODEL") or DEFAULT_DETECTOR_MODEL,
        detection_threshold=float(env.get("IMAGEREC_DETECTION_THRESHOLD", "0.25")),
        thumbnail_size=int(env.get("IMAGEREC_THUMBNAIL_SIZE", "256")),
        max_image_pixels=int(env.get("IMAGEREC_MAX_IMAGE_PIXELS", str(50_000_000))),
        max_upload_bytes=int(env.get("IMAGEREC_MAX_UPLOAD_BYTES", str(30 * 1024 * 1024))),
        photo_memory=int(env.get("IMAGEREC_PHOTO_MEMORY") or photo_memory(env)),
        stuck_after_seconds=stuck_after_seconds(env),
        untouched_after_seconds=float(
            env.get("IMAGEREC_UNTOUCHED_AFTER_SECONDS") or DEFAULT_UNTOUCHED_AFTER_SECONDS
        ),
    )


def stuck_after_seconds(env: Mapping[str, str] | None = None) -> float:
    """When the reconciler re-sends a photo's work, and the web offers to retry it: never while
    Knative may still be retrying it (DEFAULT_STUCK_AFTER_SECONDS), unless
    IMAGEREC_STUCK_AFTER_SECONDS says otherwise."""
    env = os.environ if env is None else env
    return float(env.get("IMAGEREC_STUCK_AFTER_SECONDS") or DEFAULT_STUCK_AFTER_SECONDS)
