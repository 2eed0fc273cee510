"""The album as a gallery, in real headless Chromium against the web service alone (photos are
made through the core in the states a test needs; tests/test_browser.py runs the pipeline).

Screenshots go to test-artifacts/browser/ (CI keeps that folder).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from conftest import IMAGES, ROOT
from playwright.sync_api import Page, expect
from web_only import WebOnly, start_web_only

from imagerec.models import Status

pytestmark = [pytest.mark.browser]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PASSWORD = "correct horse battery"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    # Debian's Chromium: Playwright cannot download its own build here.
    return {
        **browser_type_launch_args,
        "executable_path": shutil.which("chromium") or "/usr/bin/chromium",
    }


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebOnly]:
    web = start_web_only(tmp_path_factory.mktemp("web-only"))
    yield web
    web.stop()


@pytest.fixture
def page(page: Page) -> Page:
    page.set_default_timeout(15_000)
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_up(page: Page, web: WebOnly) -> str:
    username = f"ann-{uuid4().hex[:8]}"
    page.goto(web.url + "/auth/signup")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#signup-button")
    expect(page.locator("#nav-user")).to_have_attribute("data-username", username)
    return username


def create_album(page: Page, name: str) -> str:
    page.fill("#album-name", name)
    page.click("#create-album-button")
    expect(page.locator("#album-title")).to_have_text(name)
    return page.url


def upload_item(page: Page, file_name: str):
    return page.locator(f"#upload-list .upload-item[data-file-name='{file_name}']")


def polls(page: Page) -> int:
    return int(page.locator("#album").get_attribute("data-polls") or 0)


def test_a_duplicate_stays_a_duplicate_while_the_album_polls(
    page: Page, web: WebOnly, tmp_path: Path
) -> None:
    user = sign_up(page, web)
    create_album(page, "Dogs")
    web.add_photo(user, "Dogs", "dog.jpg", Status.DONE, source=IMAGES / "objects/dog.jpg")
    page.reload()

    copy = tmp_path / "dog copy.jpg"
    shutil.copyfile(IMAGES / "objects/dog.jpg", copy)
    # The eagle stays `uploaded` (no broker here), so the page keeps polling meanwhile.
    page.set_input_files("#file-input", [copy, IMAGES / "objects/eagle.jpg"])
    repeat = upload_item(page, "dog copy.jpg")
    expect(repeat).to_have_attribute("data-state", "duplicate")
    expect(repeat.locator(".upload-state")).to_contain_text(
        re.compile("already in this album as dog.jpg", re.I)
    )
    expect(upload_item(page, "eagle.jpg")).to_have_attribute("data-state", "uploaded")
    seen = polls(page)
    expect(page.locator("#album")).to_have_attribute("data-polls", str(seen + 2), timeout=20_000)
    expect(repeat).to_have_attribute("data-state", "duplicate")
    expect(repeat.locator(".upload-state")).to_contain_text(
        re.compile("already in this album as dog.jpg", re.I)
    )
    shot(page, "gallery-duplicate")


@pytest.mark.parametrize("name", ["犬の写真.jpg", "Собака.jpg", "dog 🐶.jpg"])
def test_a_photo_named_outside_latin_1_shows_and_downloads(
    page: Page, web: WebOnly, tmp_path: Path, name: str
) -> None:
    user = sign_up(page, web)
    create_album(page, "Names")
    image_id = web.add_photo(user, "Names", name, Status.DONE, source=IMAGES / "objects/dog.jpg")
    page.goto(f"{web.url}/photos/{image_id}")
    expect(page.locator("#photo-title")).to_have_text(name)
    image = page.locator("#photo-image")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 768

    with page.expect_download() as download:
        page.click("#original-link")
    saved = tmp_path / "saved"
    download.value.save_as(saved)
    assert download.value.suggested_filename == name
    assert saved.read_bytes() == (IMAGES / "objects/dog.jpg").read_bytes()
