"""The album pages in real headless Chromium, against `imagerec dev`'s whole stack (every step
as its own service, the local runner, the offline detector): what a user does, start to end.

Screenshots of each stage are kept in test-artifacts/browser/ (CI keeps that folder).
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from conftest import IMAGES, ROOT
from pipeline import start_dev_stack
from playwright.sync_api import Browser, Page, expect

from imagerec.db import session_factory
from imagerec.models import Image, Status
from workflows.dev import DevStack

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PASSWORD = "correct horse battery"
# Detection and the other steps on a 2-core machine: generous, the test ends as soon as it can.
PIPELINE_MS = 180_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    # Debian's Chromium: Playwright cannot download its own build here.
    return {
        **browser_type_launch_args,
        "executable_path": shutil.which("chromium") or "/usr/bin/chromium",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    monkeypatch = pytest.MonkeyPatch()
    stack = start_dev_stack(tmp_path_factory.mktemp("browser"), monkeypatch)
    yield stack
    stack.stop()
    monkeypatch.undo()


@pytest.fixture
def page(page: Page) -> Page:
    page.set_default_timeout(15_000)
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_up(page: Page, stack: DevStack) -> str:
    username = f"ann-{uuid4().hex[:8]}"
    page.goto(stack.web_url)
    page.click("#nav-signup")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#signup-button")
    expect(page.locator("#nav-user")).to_have_attribute("data-username", username)
    return username


def create_album(page: Page, name: str) -> str:
    page.fill("#album-name", name)
    page.click("#create-album-button")
    expect(page.locator("#album-title")).to_have_text(name)
    # album.js, at the end of the body, wires the file input: the title can show before it
    # runs, and files chosen then are never uploaded (seen once under load).
    page.wait_for_load_state("load")
    return page.url


def card(page: Page, file_name: str):
    return page.locator("#photo-grid .photo-card").filter(
        has=page.locator(".file-name", has_text=re.compile(f"^{re.escape(file_name)}$"))
    )


def drop_files(page: Page, paths: list[Path]) -> None:
    """Drag files from the desktop onto the drop zone, as the browser delivers such a drop."""
    files = [{"name": p.name, "b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, {type: "image/jpeg"}));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event("#upload-form", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#upload-form", "drop", {"dataTransfer": transfer})


def test_a_photo_goes_from_upload_to_labels_boxes_and_deletion(
    page: Page, browser: Browser, stack: DevStack
) -> None:
    sign_up(page, stack)
    album_url = create_album(page, "Summer <2026>")
    shot(page, "01-empty-album")

    # The page must stay the same document throughout: states arrive without a reload.
    page.evaluate("window.sameDocument = true")
    page.set_input_files(
        "#file-input",
        [
            IMAGES / "objects/dog.jpg",
            IMAGES / "exif/nikon_p6000_gps.jpg",
            IMAGES / "bad/text_named.jpg",
        ],
    )
    uploads = page.locator("#upload-list .upload-item")
    expect(uploads).to_have_count(3)
    expect(page.locator("#photo-grid .photo-card")).to_have_count(3)
    shot(page, "02-uploading")

    dog, nikon, bad = (
        card(page, "dog.jpg"),
        card(page, "nikon_p6000_gps.jpg"),
        card(page, "text_named.jpg"),
    )
    expect(dog).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)
    expect(nikon).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)
    expect(bad).to_have_attribute("data-status", "rejected", timeout=PIPELINE_MS)
    assert page.evaluate("window.sameDocument") is True
    # Finished uploads leave the list by themselves; the rejected one stays to be read.
    expect(uploads).to_have_count(1, timeout=15_000)
    expect(uploads.first).to_have_attribute("data-file-name", "text_named.jpg")
    expect(uploads.first).to_have_attribute("data-state", "rejected")
    expect(uploads.first.locator("progress")).to_have_attribute("value", "100")
    shot(page, "03-processed")

    # A tile is the picture (details are on the photo page); a rejected file says why.
    expect(dog.locator("img.thumb")).to_be_visible()
    assert dog.locator("img.thumb").evaluate("img => img.naturalWidth") > 0
    expect(bad.locator(".reason")).to_be_visible()
    expect(bad.locator(".reason")).to_contain_text("not")
    expect(bad.locator(".thumb-placeholder")).to_be_visible()
    expect(page.locator("#album-summary")).to_contain_text("2 photos")

    nikon.locator(".photo-link").click()
    expect(page.locator("#photo-meta .meta-item[data-field='camera'] dd")).to_contain_text("P6000")
    expect(page.locator("#map-link")).to_have_attribute("href", re.compile(r"^https://"))
    page.keyboard.press("Escape")
    expect(page.locator("#album-title")).to_have_text("Summer <2026>")

    # Filter the album by a label: only the dog remains.
    page.click("#label-filter .filter-chip[data-label='Dog']")
    expect(page.locator("#filter-note")).to_contain_text("Dog")
    expect(page.locator("#photo-grid .photo-card")).to_have_count(1)
    expect(card(page, "dog.jpg")).to_be_visible()
    shot(page, "04-filtered-by-dog")

    # The photo view: detection boxes drawn over the original, inside it.
    card(page, "dog.jpg").locator(".photo-link").click()
    expect(page.locator("#photo")).to_have_attribute("data-status", "done")
    photo = page.locator("#photo-image")
    expect(photo).to_be_visible()
    page.wait_for_function("document.getElementById('photo-image').complete")
    dog_box = page.locator("#photo-stage .box[data-label='Dog']").first
    expect(dog_box).to_be_visible()
    expect(dog_box.locator(".box-label")).to_contain_text("Dog")
    inner, outer = dog_box.bounding_box(), photo.bounding_box()
    assert inner and outer and inner["width"] > 20 and inner["height"] > 20
    assert (
        outer["x"] - 1 <= inner["x"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
    )
    assert (
        outer["y"] - 1 <= inner["y"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1
    )
    expect(page.locator("#photo-labels .label-chip[data-label='Dog']")).to_be_visible()
    expect(page.locator("#photo-labels .label-chip[data-label='Dog'] .score")).to_have_text(
        re.compile(r"^\d+%$")
    )
    expect(page.locator("#photo-meta .meta-item[data-field='dimensions'] dd")).to_have_text(
        "768 × 576"
    )
    shot(page, "05-photo-with-boxes")

    # Delete the rejected file from the album page (after confirming).
    page.click("#back-to-album")
    page.click("#filter-all")
    expect(page.locator("#photo-grid .photo-card")).to_have_count(3)
    page.once("dialog", lambda dialog: dialog.accept())
    card(page, "text_named.jpg").locator(".delete-photo-button").click()
    expect(page.locator("#photo-grid .photo-card")).to_have_count(2)
    expect(card(page, "text_named.jpg")).to_have_count(0)
    thumbnail = card(page, "dog.jpg").locator("img.thumb").get_attribute("src")
    assert thumbnail
    shot(page, "06-after-delete")

    # Another user finds nothing there, not even a hint that it exists.
    other = browser.new_page()
    sign_up(other, stack)
    response = other.goto(album_url)
    assert response is not None and response.status == 404
    assert other.request.get(stack.web_url.rstrip("/") + thumbnail).status == 404
    other.close()

    # Signed out, the album and its photos are out of reach.
    page.click("#signout-button")
    expect(page.locator("#nav-signin")).to_be_visible()
    page.goto(album_url)
    expect(page).to_have_url(re.compile(r"/auth/signin"))
    expect(page.locator("#album-title")).to_have_count(0)
    thumb = page.request.get(stack.web_url.rstrip("/") + thumbnail, max_redirects=0)
    assert thumb.status in (302, 401)
    shot(page, "07-signed-out")


def test_dropped_photos_upload_and_a_repeat_is_named_a_duplicate(
    page: Page, stack: DevStack, tmp_path: Path
) -> None:
    sign_up(page, stack)
    create_album(page, "Drops")

    drop_files(page, [IMAGES / "objects/eagle.jpg"])
    item = page.locator("#upload-list .upload-item[data-file-name='eagle.jpg']")
    expect(item).to_have_count(1)
    expect(item).to_have_attribute(
        "data-state", re.compile("^(uploaded|processing|done)$"), timeout=30_000
    )
    expect(card(page, "eagle.jpg")).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)

    # The same bytes again, under another name: recognised, not stored twice.
    copy = tmp_path / "eagle again.jpg"
    shutil.copyfile(IMAGES / "objects/eagle.jpg", copy)
    drop_files(page, [copy])
    expect(page.locator("#upload-list .upload-item")).to_have_count(2)
    repeat = page.locator("#upload-list .upload-item").first
    expect(repeat).to_have_attribute("data-state", "duplicate")
    expect(repeat.locator(".upload-state")).to_contain_text(
        re.compile("already in this album as eagle.jpg", re.I)
    )
    expect(page.locator("#photo-grid .photo-card")).to_have_count(1)
    shot(page, "08-duplicate")


def test_label_search_finds_photos_across_albums(page: Page, stack: DevStack) -> None:
    sign_up(page, stack)
    for album, photo in (("Pets", "objects/dog.jpg"), ("Birds", "objects/eagle.jpg")):
        page.click("#nav-albums")
        create_album(page, album)
        page.set_input_files("#file-input", [IMAGES / photo])
        expect(page.locator("#photo-grid .photo-card")).to_have_attribute(
            "data-status", "done", timeout=PIPELINE_MS
        )

    page.click("#nav-search")
    page.fill("#search-label", "dog")
    page.click("#search-button")
    expect(page.locator("#search-summary")).to_have_attribute("data-count", "1")
    expect(card(page, "dog.jpg")).to_be_visible()
    expect(card(page, "eagle.jpg")).to_have_count(0)
    shot(page, "09-search")


def test_a_failed_photo_shows_why_and_its_retry_button_finishes_it(
    page: Page, stack: DevStack
) -> None:
    sign_up(page, stack)
    create_album(page, "Retries")
    page.set_input_files("#file-input", [IMAGES / "objects/horses.jpg"])
    horses = card(page, "horses.jpg")
    expect(horses).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)
    expect(horses.locator(".retry-button")).to_be_hidden()

    # What the dead-letter path (record-failure) leaves behind when a step kept failing.
    image_id = horses.get_attribute("data-image-id")
    with session_factory(stack.settings.database_url)() as session:
        row = session.get(Image, image_id)
        row.status, row.reason = Status.FAILED, "detect-objects kept failing: model unavailable"
        session.commit()

    page.reload()  # nothing was in flight, so the page was not polling: it shows it on load
    expect(horses).to_have_attribute("data-status", "failed", timeout=15_000)
    expect(horses.locator(".reason")).to_have_text("detect-objects kept failing: model unavailable")
    shot(page, "10-failed")
    horses.locator(".retry-button").click()
    expect(card(page, "horses.jpg")).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)
    expect(card(page, "horses.jpg").locator(".reason")).to_be_hidden()
    expect(page.locator("#label-filter .filter-chip[data-label='Horse']")).to_be_visible()


def test_an_upload_the_filter_hides_still_shows_its_progress(page: Page, stack: DevStack) -> None:
    sign_up(page, stack)
    create_album(page, "Filtered")
    page.set_input_files("#file-input", [IMAGES / "objects/dog.jpg"])
    expect(card(page, "dog.jpg")).to_have_attribute("data-status", "done", timeout=PIPELINE_MS)
    page.goto(page.url + "?label=dog")  # any case: the chip shown active is the detector's Dog
    expect(page.locator("#label-filter .filter-chip.active")).to_have_attribute("data-label", "Dog")

    page.set_input_files("#file-input", [IMAGES / "objects/eagle.jpg"])

    eagle = page.locator("#upload-list .upload-item[data-file-name='eagle.jpg']")
    expect(eagle).to_have_attribute("data-state", "done", timeout=PIPELINE_MS)
    expect(card(page, "eagle.jpg")).to_have_count(0)  # a bird is not a dog
    expect(page.locator("#photo-grid .photo-card")).to_have_count(1)
