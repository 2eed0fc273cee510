"""The detector image carries its SavedModel: the Dockerfile's `model` stage and its script.

knative/build/fetch_model.py runs here, locally, as the stage runs it, against the shared
SavedModel (the TF Hub handle needs the network, so its fetch is replaced by the local folder
where the handle would be resolved). The copy must then work through the step's own loader,
functions/detect_objects.load_detector, and find the dog in dog.jpg.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from imagerec.config import DEFAULT_DETECTOR_MODEL
from tests.conftest import IMAGES, MODEL, ROOT

SCRIPT = ROOT / "knative" / "build" / "fetch_model.py"
DOCKERFILE = ROOT / "Dockerfile"


def fetch_model_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import fetch_model
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return fetch_model


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_a_local_folder_becomes_the_detector_the_step_loads(tmp_path: Path) -> None:
    destination = tmp_path / "opt" / "imagerec" / "model"
    result = run_script(str(MODEL), str(destination))
    assert result.returncode == 0, result.stderr
    assert (destination / "saved_model.pb").is_file()

    from functions.detect_objects import detect, load_detector

    detector = load_detector(str(destination))
    with Image.open(IMAGES / "objects" / "dog.jpg") as image:
        labels = {d["label"] for d in detect(detector, image.convert("RGB"), 0.25)}
    assert "Dog" in labels


def test_a_handle_is_resolved_then_copied_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_model = fetch_model_module()
    import tensorflow_hub as hub

    asked = []
    monkeypatch.setattr(hub, "resolve", lambda handle: asked.append(handle) or str(MODEL))
    folder = fetch_model.fetch(DEFAULT_DETECTOR_MODEL, tmp_path / "model")
    assert asked == [DEFAULT_DETECTOR_MODEL]
    assert fetch_model.check(folder)  # the signature answers with labels


def test_a_failed_fetch_fails_the_build_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_model = fetch_model_module()
    import tensorflow_hub as hub

    def offline(handle: str) -> str:
        raise OSError("Name or service not known")

    monkeypatch.setattr(hub, "resolve", offline)
    with pytest.raises(fetch_model.ModelError, match="cannot fetch .*Name or service not known"):
        fetch_model.fetch(DEFAULT_DETECTOR_MODEL, tmp_path / "model")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("not-a-model", "neither a folder nor a TF Hub handle"),
        ("EMPTY", "holds no saved_model.pb"),
    ],
)
def test_a_bad_source_is_refused_with_one_sentence(
    tmp_path: Path, source: str, message: str
) -> None:
    if source == "EMPTY":
        source = str(tmp_path / "empty")
        Path(source).mkdir()
    result = run_script(source, str(tmp_path / "out"))
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_an_existing_destination_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run_script(str(MODEL), str(tmp_path / "out"))
    assert result.returncode == 1 and "exists already" in result.stderr


# --- the Dockerfile around it --------------------------------------------------------------


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    text = DOCKERFILE.read_text()
    found = {}
    for block in re.split(r"^(?=FROM )", text, flags=re.M)[1:]:
        name = re.match(r"FROM \S+ AS (\S+)", block).group(1)
        found[name] = block
    return found


def test_the_detector_stage_carries_the_model_and_points_at_it() -> None:
    all_stages = stages()
    assert list(all_stages) == ["deps", "app", "model", "detector"]
    assert all_stages["deps"].startswith("FROM python:3.11-slim AS deps")
    model, detector = all_stages["model"], all_stages["detector"]
    [default] = re.findall(r"^ARG MODEL=(\S+)$", model, re.M)
    assert default == DEFAULT_DETECTOR_MODEL  # the same handle the step would load
    run = re.search(r'^RUN python fetch_model\.py "\$MODEL" (\S+)$', model, re.M)
    assert run, model
    destination = run.group(1)
    assert f"COPY --from=model {destination} {destination}" in detector
    [env] = re.findall(r"^ENV IMAGEREC_DETECTOR_MODEL=(\S+)$", detector, re.M)
    assert env == destination
    # The manifests and kn-deploy.sh say the same path.
    steps = yaml.safe_load_all((ROOT / "knative" / "base" / "steps.yaml").read_text())
    [detector_service] = [d for d in steps if d and d["metadata"]["name"] == "detect-objects"]
    [c] = detector_service["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in c["env"]}["IMAGEREC_DETECTOR_MODEL"] == env
    assert f"IMAGEREC_DETECTOR_MODEL={env}" in (ROOT / "knative" / "kn-deploy.sh").read_text()
    # The app stage (web and steps) never needs the model stage.
    assert "--from=model" not in all_stages["app"]


def test_the_build_context_holds_what_the_model_stage_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().split()
        if line.startswith("!")
    }
    model = stages()["model"]
    for source in re.findall(r"^COPY (\S+) \S+$", model, re.M):
        assert source.rstrip("/") in allowed, source
        assert (ROOT / source).exists(), source  # models/ exists (its README) even when empty


def test_skaffold_builds_each_image_from_its_stage() -> None:
    artifacts = yaml.safe_load((ROOT / "skaffold.yaml").read_text())["build"]["artifacts"]
    targets = {a["image"]: a["docker"]["target"] for a in artifacts}
    assert targets == {
        "imagerec-web": "app",
        "imagerec-step": "app",
        "imagerec-detector": "detector",
    }
