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
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from web_only import WebOnly, start_web_only

from imagerec.models import Image, Status

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
    web = start_web_only(
        tmp_path_factory.mktemp("web-only"), IMAGEREC_MAX_UPLOAD_BYTES=str(5 * 1024 * 1024)
    )
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
    page.wait_for_load_state("load")  # album.js wires the file input (test_browser.py)
    return page.url


def upload_item(page: Page, file_name: str):
    return page.locator(f"#upload-list .upload-item[data-file-name='{file_name}']")


def photo_shown(page: Page, file_name: str) -> None:
    """The photo view of `file_name`, with its script (and so its keys) ready."""
    expect(page.locator("#photo-title")).to_have_text(file_name)
    expect(page.locator("#photo")).to_have_attribute("data-ready", "1")


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


# --- helpers for the gallery tests --------------------------------------------------------------

AXE = ROOT / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"


def check_a11y(page: Page, state: str) -> None:
    """axe-core's WCAG 2.x A/AA rules and best practices on the page as it is now: 0 violations."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make test-setup` (it installs axe-core from npm)")
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text())  # evaluate, not a <script>: the CSP forbids inline scripts
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document);
            return {passes: r.passes.length, violations: r.violations.map(v => ({id: v.id,
                help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' +
                n.failureSummary)}))};
        }"""
    )
    assert result["passes"] > 10, f"axe-core checked next to nothing on {state}"
    assert result["violations"] == [], f"axe-core on {state}: {result['violations']}"


def no_sideways_scroll(page: Page, where: str) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{where}: {width[0]} px wide in a {width[1]} px window"


def tiles(page: Page):
    return page.locator("#photo-grid .photo-card")


def tile(page: Page, file_name: str):
    return tiles(page).filter(
        has=page.locator(".file-name", has_text=re.compile(f"^{re.escape(file_name)}$"))
    )


def gallery_ready(page: Page) -> None:
    expect(page.locator("#photo-grid")).to_have_attribute("aria-busy", "false")


def per_row(page: Page) -> int:
    tops = [round(b["y"]) for b in (t.bounding_box() for t in tiles(page).all()[:12]) if b]
    return tops.count(tops[0])


def fill_album(web: WebOnly, user: str, album: str) -> dict[str, str]:
    """An album as people have it: photos over three days, one rejected, one still processing."""
    ids = {}
    for n in range(8):
        ids[f"beach-{n}.jpg"] = web.add_photo(
            user,
            album,
            f"beach-{n}.jpg",
            colour=(40 + 20 * n, 120, 200 - 15 * n),
            taken=f"2024-07-{12 + n % 3:02d}T1{n}:00:00",
            detections=[("Person", 0.9, [0.2, 0.1, 0.9, 0.4])] if n % 2 else [],
        )
    ids["notes.txt"] = web.add_photo(
        user, album, "notes.txt", Status.REJECTED, reason="This file is not an image we can read."
    )
    ids["fresh.jpg"] = web.add_photo(user, album, "fresh.jpg", Status.PROCESSING)
    return ids


# --- the gallery --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "viewport,mobile", [(PHONE, True), (DESKTOP, False)], ids=["phone", "desktop"]
)
def test_the_gallery_fits_phones_and_desktops(
    browser: Browser, web: WebOnly, viewport: dict, mobile: bool
) -> None:
    context = browser.new_context(
        viewport=viewport,
        is_mobile=mobile,
        has_touch=mobile,
        device_scale_factor=2 if mobile else 1,
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    size = "phone" if mobile else "desktop"
    user = sign_up(page, web)
    no_sideways_scroll(page, "albums, empty")
    album_url = create_album(page, "Summer at the sea, with a long name that has to wrap somewhere")
    ids = fill_album(web, user, "Summer at the sea, with a long name that has to wrap somewhere")
    web.add_photo(user, "Summer at the sea, with a long name that has to wrap somewhere", "x.jpg")
    page.reload()
    gallery_ready(page)
    expect(tiles(page)).to_have_count(11)
    no_sideways_scroll(page, "album")
    rows = per_row(page)
    assert rows >= 3 if mobile else rows >= 6, f"{rows} tiles a row on a {size}"
    # Details belong on the photo page: a tile is a picture, not a form.
    expect(tile(page, "beach-1.jpg").locator("img.thumb")).to_be_visible()
    expect(tile(page, "beach-1.jpg").locator(".meta, .labels")).to_have_count(0)
    expect(tile(page, "notes.txt").locator(".reason")).to_contain_text("not an image")
    expect(tile(page, "fresh.jpg").locator(".status-badge")).to_be_visible()
    # On a phone there is nothing to drop onto: the button says what to do.
    expect(page.locator("#choose-button")).to_have_text("Choose photos")
    expect(page.locator("#choose-button")).to_be_visible()
    expect(page.locator("#drop-hint")).to_be_visible(visible=not mobile)
    # "Sign out" stays on one line; the album menu opens over the page, not into the title.
    signout = page.locator("#signout-button").bounding_box()
    assert signout and signout["height"] < 32
    assert signout["x"] + signout["width"] <= viewport["width"]
    title = page.locator("#album-title").bounding_box()
    page.click("#album-settings summary")
    expect(page.locator("#rename-name")).to_be_visible()
    assert page.locator("#album-title").bounding_box() == title
    panel = page.locator("#album-settings .menu-panel").bounding_box()
    assert panel and panel["x"] >= 0 and panel["x"] + panel["width"] <= viewport["width"]
    no_sideways_scroll(page, "album with its menu open")
    shot(page, f"gallery-album-{size}")
    page.click("#album-settings summary")

    page.goto(f"{web.url}/photos/{ids['beach-1.jpg']}")
    expect(page.locator("#photo-image")).to_have_js_property("complete", True)
    no_sideways_scroll(page, "photo page")
    shot(page, f"gallery-photo-{size}")

    page.click("#nav-albums")
    expect(page.locator("#album-list .album-card")).to_have_count(1)
    expect(page.locator(".photo-count")).to_have_attribute("data-count", "10")
    no_sideways_scroll(page, "albums")
    shot(page, f"gallery-albums-{size}")

    page.goto(f"{web.url}/search?label=person")
    expect(page.locator("#search-summary")).to_have_attribute("data-count", "4")
    no_sideways_scroll(page, "search")
    shot(page, f"gallery-search-{size}")

    page.click("#signout-button")
    page.goto(web.url + "/auth/signin")
    no_sideways_scroll(page, "sign-in")
    shot(page, f"gallery-signin-{size}")
    page.goto(album_url)
    context.close()


def test_the_photo_page_is_a_lightbox_with_previous_next_and_escape(
    page: Page, web: WebOnly
) -> None:
    user = sign_up(page, web)
    album_url = create_album(page, "Row")
    for n in range(5):
        web.add_photo(user, "Row", f"p{n}.jpg", colour=(50 * n, 100, 150))
    page.reload()
    gallery_ready(page)
    names = [t.locator(".file-name").inner_text() for t in tiles(page).all()]
    assert names == ["p4.jpg", "p3.jpg", "p2.jpg", "p1.jpg", "p0.jpg"]  # newest upload first

    tile(page, "p3.jpg").locator(".photo-link").click()
    photo_shown(page, "p3.jpg")
    page.keyboard.press("ArrowRight")
    photo_shown(page, "p2.jpg")
    page.click("#next-photo")
    photo_shown(page, "p1.jpg")
    page.keyboard.press("ArrowLeft")
    photo_shown(page, "p2.jpg")
    page.click("#prev-photo")
    photo_shown(page, "p3.jpg")
    page.keyboard.press("ArrowLeft")
    photo_shown(page, "p4.jpg")
    expect(page.locator("#prev-photo")).to_be_hidden()  # the first photo has no previous
    page.keyboard.press("Escape")
    expect(page).to_have_url(album_url)
    gallery_ready(page)
    # Back where the user was: the photo last seen has the focus.
    expect(tile(page, "p4.jpg").locator(".photo-link")).to_be_focused()


def test_overlapping_box_labels_stay_readable_and_inside_the_photo(
    browser: Browser, web: WebOnly
) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    user = sign_up(page, web)
    create_album(page, "Boxes")
    same = [0.05, 0.6, 0.5, 0.99]  # at the top right corner: labels must turn inwards
    image_id = web.add_photo(
        user,
        "Boxes",
        "crowd.jpg",
        detections=[
            ("Person", 0.93, same),
            ("Man", 0.81, same),
            ("Clothing", 0.64, same),
            ("Dog", 0.9, [0.5, 0.1, 0.9, 0.5]),
        ],
    )
    page.goto(f"{web.url}/photos/{image_id}")
    expect(page.locator("#photo-image")).to_have_js_property("complete", True)
    labels = page.locator("#photo-stage .box-label")
    expect(labels).to_have_count(4)
    stage = page.locator("#photo-stage").bounding_box()
    boxes = [b for b in (label.bounding_box() for label in labels.all()) if b]
    assert len(boxes) == 4
    for n, a in enumerate(boxes):
        assert stage["x"] - 0.5 <= a["x"] <= stage["x"] + stage["width"] - a["width"] + 0.5
        assert stage["y"] - 0.5 <= a["y"] <= stage["y"] + stage["height"] - a["height"] + 0.5
        for b in boxes[n + 1 :]:
            apart = (
                a["x"] + a["width"] <= b["x"] + 0.5
                or b["x"] + b["width"] <= a["x"] + 0.5
                or a["y"] + a["height"] <= b["y"] + 0.5
                or b["y"] + b["height"] <= a["y"] + 0.5
            )
            assert apart, f"labels overlap: {a} {b}"
    no_sideways_scroll(page, "photo page with boxes")
    shot(page, "gallery-boxes-phone")
    # A label is a link: the album, filtered by it.
    chip = page.locator("#photo-labels .label-chip[data-label='Dog']")
    chip.focus()
    expect(page.locator("#photo-stage .box[data-label='Person']")).to_have_class(re.compile("dim"))
    page.keyboard.press("Enter")
    expect(page.locator("#filter-note")).to_contain_text("Dog")
    expect(tiles(page)).to_have_count(1)
    context.close()


def test_deleting_a_photo_keeps_the_page_and_its_scroll_position(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Many")
    web.add_many(user, "Many", 90)
    page.reload()
    gallery_ready(page)
    expect(tiles(page)).to_have_count(90)
    page.evaluate("window.sameDocument = true")
    target = tile(page, "IMG_00020.jpg")
    target.scroll_into_view_if_needed()
    page.mouse.wheel(0, 200)
    page.wait_for_timeout(200)
    before = page.evaluate("window.scrollY")
    assert before > 300
    page.once("dialog", lambda dialog: dialog.accept())
    target.hover()
    button = target.locator(".delete-photo-button")
    expect(button).to_have_accessible_name("Delete IMG_00020.jpg")
    button.click()
    expect(tiles(page)).to_have_count(89)
    expect(tile(page, "IMG_00020.jpg")).to_have_count(0)
    assert page.evaluate("window.sameDocument") is True
    assert abs(page.evaluate("window.scrollY") - before) < 5
    page.reload()
    gallery_ready(page)
    expect(tiles(page)).to_have_count(89)


def test_several_photos_are_deleted_or_moved_at_once(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Elsewhere")
    page.click("#nav-albums")
    album_url = create_album(page, "Mixed")
    for n in range(6):
        web.add_photo(user, "Mixed", f"m{n}.jpg", colour=(30 * n, 90, 160))
    page.reload()
    gallery_ready(page)
    page.evaluate("window.sameDocument = true")

    page.click("#select-button")
    expect(page.locator("#select-button")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Escape")  # leaves selecting
    expect(page.locator("#select-button")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#bulk-bar")).to_be_hidden()
    page.click("#select-button")
    expect(page.locator("#bulk-bar")).to_be_visible()
    for name in ("m1.jpg", "m2.jpg"):
        tile(page, name).locator(".photo-link").click()  # selects instead of opening
    expect(page.locator("#selected-count")).to_have_text("2 photos selected")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#bulk-delete-button")
    expect(tiles(page)).to_have_count(4)
    expect(tile(page, "m1.jpg")).to_have_count(0)

    page.click("#select-button")
    tile(page, "m4.jpg").locator(".select-photo").check()
    tile(page, "m5.jpg").locator(".photo-link").click()
    expect(page.locator("#selected-count")).to_have_text("2 photos selected")
    page.select_option("#move-target", label="Elsewhere")
    page.click("#bulk-move-button")
    expect(tiles(page)).to_have_count(2)
    expect(page.locator("#bulk-bar")).to_be_hidden()
    assert page.evaluate("window.sameDocument") is True
    assert page.url == album_url

    page.click("#nav-albums")
    page.locator(".album-card[data-album-name='Elsewhere'] .album-link").click()
    gallery_ready(page)
    names = sorted(t.locator(".file-name").inner_text() for t in tiles(page).all())
    assert names == ["m4.jpg", "m5.jpg"]


def set_status(web: WebOnly, image_id: str, status: Status) -> None:
    with web.session() as session:
        session.get(Image, image_id).status = status
        session.commit()


def test_the_upload_list_says_what_happens_and_clears_itself(
    page: Page, web: WebOnly, tmp_path: Path
) -> None:
    sign_up(page, web)
    create_album(page, "Uploads")
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8" + b"0" * (6 * 1024 * 1024))
    page.set_input_files("#file-input", [IMAGES / "objects/dog.jpg", big])
    dog = upload_item(page, "dog.jpg")
    expect(dog).to_have_attribute("data-state", "uploaded")
    expect(dog.locator("progress")).to_have_attribute("value", "100")
    expect(dog.locator("progress")).to_have_accessible_name("dog.jpg")
    expect(upload_item(page, "huge.jpg")).to_have_attribute("data-state", "error")
    expect(upload_item(page, "huge.jpg").locator(".upload-state")).to_contain_text("limit")
    expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")
    set_status(web, dog.get_attribute("data-image-id"), Status.DONE)
    expect(dog).to_have_attribute("data-state", "done", timeout=15_000)
    expect(tile(page, "dog.jpg")).to_have_attribute("data-status", "done")
    # Done uploads leave by themselves; a problem stays until it is read and cleared.
    expect(dog).to_have_count(0, timeout=10_000)
    expect(upload_item(page, "huge.jpg")).to_be_visible()
    page.click("#clear-uploads")
    expect(page.locator("#uploads")).to_be_hidden()


# --- accessibility ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "viewport,mobile", [(DESKTOP, False), (PHONE, True)], ids=["desktop", "phone"]
)
def test_every_page_and_state_has_no_axe_violations(
    browser: Browser, web: WebOnly, tmp_path: Path, viewport: dict, mobile: bool
) -> None:
    context = browser.new_context(viewport=viewport, is_mobile=mobile, has_touch=mobile)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(web.url + "/auth/signup")
    check_a11y(page, "sign-up")
    page.goto(web.url + "/auth/signin")
    page.fill("#username", "nobody-here")
    page.fill("#password", "wrong password")
    page.click("#signin-button")
    expect(page.locator(".flash[data-category='error']")).to_be_visible()
    check_a11y(page, "sign-in with an error")

    user = sign_up(page, web)
    check_a11y(page, "albums, none yet")
    create_album(page, "Empty")
    gallery_ready(page)
    check_a11y(page, "empty album")
    page.click("#album-settings summary")
    check_a11y(page, "album menu open")

    page.click("#nav-albums")
    create_album(page, "Full")
    ids = fill_album(web, user, "Full")
    failed = web.add_photo(
        user, "Full", "broken.jpg", Status.FAILED, reason="detect-objects kept failing"
    )
    page.reload()
    gallery_ready(page)
    expect(tiles(page)).to_have_count(11)
    expect(tile(page, "broken.jpg").locator(".retry-button")).to_be_visible()
    check_a11y(page, "album with done, rejected, processing and failed photos")

    copy = tmp_path / "copy.jpg"
    shutil.copyfile(IMAGES / "objects/dog.jpg", copy)
    page.set_input_files("#file-input", [IMAGES / "objects/dog.jpg"])
    expect(upload_item(page, "dog.jpg")).to_have_attribute("data-state", "uploaded")
    page.set_input_files("#file-input", [copy])
    expect(upload_item(page, "copy.jpg")).to_have_attribute("data-state", "duplicate")
    check_a11y(page, "album with uploads in the list")
    page.click("#select-button")
    tile(page, "beach-2.jpg").locator(".photo-link").click()
    check_a11y(page, "album while selecting")
    page.click("#bulk-cancel-button")

    page.click("#label-filter .filter-chip[data-label='Person']")
    gallery_ready(page)
    check_a11y(page, "album filtered by a label")
    page.select_option("#sort-select", "taken")
    gallery_ready(page)
    check_a11y(page, "album sorted by date taken")

    for name in ("beach-1.jpg", "notes.txt", "fresh.jpg"):
        page.goto(f"{web.url}/photos/{ids[name]}")
        check_a11y(page, f"photo page of {name}")
    page.goto(f"{web.url}/photos/{failed}")
    check_a11y(page, "photo page of a failed photo")

    page.click("#nav-albums")
    check_a11y(page, "albums with covers")
    page.click("#nav-search")
    check_a11y(page, "search, nothing asked")
    page.goto(f"{web.url}/search?label=Person")
    check_a11y(page, "search results")
    page.goto(f"{web.url}/search?label=Unicorn")
    check_a11y(page, "search without results")
    response = page.goto(f"{web.url}/albums/999999")
    assert response and response.status == 404
    check_a11y(page, "404 page")
    context.close()


def tab_to(page: Page, selector: str, limit: int = 60, key: str = "Tab") -> None:
    """Press Tab until `selector` has the focus, checking each stop shows where the focus is."""
    target = page.locator(selector)
    for _ in range(limit):
        page.keyboard.press(key)
        focused = page.evaluate(
            """() => {
                const el = document.activeElement;
                // The file input is invisible: its label, the "Choose photos" button, shows focus.
                const shown = el.type === 'file'
                    ? document.querySelector(`label[for="${el.id}"]`) : el;
                const style = getComputedStyle(shown);
                const ring = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
                const grow = parseFloat(style.outlineWidth)
                    + Math.max(0, parseFloat(style.outlineOffset) || 0);
                const r = shown.getBoundingClientRect();
                let clipped = null;
                for (let p = shown.parentElement; p && p !== document.body; p = p.parentElement) {
                    const s = getComputedStyle(p);
                    if (s.overflowX === 'visible' && s.overflowY === 'visible') continue;
                    const q = p.getBoundingClientRect();
                    if (r.left - grow < q.left - 0.5 || r.right + grow > q.right + 0.5 ||
                        r.top - grow < q.top - 0.5 || r.bottom + grow > q.bottom + 0.5) {
                        clipped = p.tagName + '.' + p.className;
                    }
                }
                return {ring, clipped, tag: el.tagName, id: el.id, cls: String(el.className)};
            }"""
        )
        assert focused["ring"], f"no visible focus on {focused}"
        assert not focused["clipped"], f"focus ring clipped around {focused}"
        if target.evaluate("el => el === document.activeElement"):
            return
    raise AssertionError(f"{selector} not reached with {limit} × {key}")


def test_the_whole_flow_works_from_the_keyboard(page: Page, web: WebOnly) -> None:
    page.goto(web.url + "/auth/signin")
    tab_to(page, "#skip-link")
    page.keyboard.press("Enter")
    expect(page.locator("#content")).to_be_focused()
    tab_to(page, "#signup-link")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("/auth/signup"))
    username = f"kim-{uuid4().hex[:8]}"
    tab_to(page, "#username")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#nav-user")).to_have_attribute("data-username", username)

    tab_to(page, "#album-name")
    page.keyboard.type("Keys")
    page.keyboard.press("Enter")
    expect(page.locator("#album-title")).to_have_text("Keys")
    gallery_ready(page)

    tab_to(page, "#file-input")
    # Space on the focused input must open the chooser; under load Chromium once let the
    # first press go by with no chooser (15 s), so a second press is allowed before failing.
    for attempt in (1, 2):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            expect(page.locator("#file-input")).to_be_focused()
    chooser.value.set_files([IMAGES / "objects/dog.jpg", IMAGES / "objects/eagle.jpg"])
    for name in ("dog.jpg", "eagle.jpg"):
        expect(upload_item(page, name)).to_have_attribute("data-state", "uploaded")
    expect(tiles(page)).to_have_count(2)
    expect(page.locator("#announcer")).not_to_be_empty()

    page.focus("#skip-link")  # from the top again: the skip link, then straight to the photos
    page.keyboard.press("Enter")
    tab_to(page, "#photo-grid .photo-card:first-child .photo-link")
    first = page.evaluate("document.activeElement.closest('.photo-card').dataset.imageId")
    page.keyboard.press("Enter")
    expect(page.locator("#photo")).to_have_attribute("data-image-id", first)
    expect(page.locator("#photo")).to_have_attribute("data-ready", "1")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#photo")).not_to_have_attribute("data-image-id", first)
    second = page.locator("#photo").get_attribute("data-image-id")
    expect(page.locator("#photo")).to_have_attribute("data-ready", "1")
    page.keyboard.press("Escape")
    expect(page.locator("#album-title")).to_have_text("Keys")
    focused = page.locator(f"#photo-{second} .photo-link")
    expect(focused).to_be_focused()

    page.once("dialog", lambda dialog: dialog.accept())
    tab_to(page, f"#photo-{second} .delete-photo-button")
    page.keyboard.press("Enter")
    expect(tiles(page)).to_have_count(1)
    expect(page.locator(f"#photo-{second}")).to_have_count(0)


# --- scale and liveness ------------------------------------------------------------------------


def test_sorting_by_date_taken_groups_photos_under_day_headings(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Trip")
    for name, taken in (
        ("late.jpg", "2024-05-03T18:00:00"),
        ("early.jpg", "2024-05-01T08:00:00"),
        ("noon.jpg", "2024-05-03T12:00:00"),
        ("unknown.jpg", None),
    ):
        web.add_photo(user, "Trip", name, taken=taken)
    page.reload()
    gallery_ready(page)
    page.select_option("#sort-select", "taken")
    expect(page).to_have_url(re.compile(r"sort=taken"))
    gallery_ready(page)
    headings = page.locator("#photo-grid .day-heading")
    expect(headings).to_have_count(3)
    texts = headings.all_inner_texts()
    assert "3" in texts[0] and "May 2024" in texts[0], texts
    assert "1" in texts[1] and "May 2024" in texts[1], texts
    names = [t.locator(".file-name").inner_text() for t in tiles(page).all()]
    assert names[:3] == ["late.jpg", "noon.jpg", "early.jpg"], names
    assert names[3] == "unknown.jpg"
    expect(page.locator("#sort-select")).to_have_value("taken")
    shot(page, "gallery-sorted-by-taken")


def test_a_long_album_loads_more_as_it_scrolls(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Long")
    web.add_many(user, "Long", 300)
    page.reload()
    gallery_ready(page)
    first = tiles(page).count()
    assert 0 < first < 300
    expect(page.locator("#load-more")).to_be_visible()
    for _ in range(10):
        page.keyboard.press("End")
        page.wait_for_timeout(300)
        if tiles(page).count() == 300:
            break
    expect(tiles(page)).to_have_count(300)
    expect(page.locator("#load-more")).to_be_hidden()
    ids = page.evaluate("[...document.querySelectorAll('#photo-grid .photo-card')].map(c => c.id)")
    assert len(set(ids)) == 300


def test_an_album_polls_only_while_something_is_in_flight(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Quiet")
    web.add_many(user, "Quiet", 40)
    web.add_photo(user, "Quiet", "still.jpg")
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
    page.reload()
    gallery_ready(page)
    page.wait_for_timeout(1000)
    loaded = len(calls)
    page.wait_for_timeout(5000)
    assert len(calls) == loaded, calls[loaded:]  # all is done: nothing to watch

    busy = web.add_photo(user, "Quiet", "busy.jpg", Status.PROCESSING)
    answers: list[dict] = []
    page.on("response", lambda r: answers.append(r.json()) if "/changes" in r.url else None)
    page.reload()
    gallery_ready(page)
    expect(page.locator("#album")).to_have_attribute("data-polls", "3", timeout=15_000)
    # The page counts a poll as soon as its script has the answer; the response event reaches
    # this process a moment later (CI saw 2 of 3 once under load), so let the events arrive.
    for _ in range(50):
        if len(answers) >= 3:
            break
        page.wait_for_timeout(100)
    # Watching costs next to nothing: the change feed carries only what was just written (it
    # repeats the last minute's writes), never the album's 40 settled photos.
    assert len(answers) >= 3
    sent = {i["fileName"] for a in answers for i in a["images"]}
    assert sent <= {"still.jpg", "busy.jpg"}, sent
    set_status(web, busy, Status.DONE)
    expect(tile(page, "busy.jpg")).to_have_attribute("data-status", "done", timeout=15_000)
    expect(page.locator("#album-summary")).to_have_text("42 photos")
    page.wait_for_timeout(1000)
    assert any(i["id"] == busy for a in answers for i in a["images"])
    assert not [c for c in calls if "/images?" in c and "cursor" not in c][1:], calls
    settled = len(calls)
    page.wait_for_timeout(5000)
    assert len(calls) == settled, calls[settled:]  # nothing in flight any more: quiet again


def test_search_results_load_more_and_count_them_all(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    create_album(page, "Kennel")
    web.add_many(user, "Kennel", 130, label="Dog")
    page.goto(f"{web.url}/search?label=dog")
    expect(page.locator("#search-summary")).to_have_attribute("data-count", "130")
    shown = tiles(page).count()
    assert 0 < shown < 130
    page.click("#load-more")
    expect(tiles(page)).to_have_count(130)
    expect(page.locator("#load-more")).to_be_hidden()
    ids = page.evaluate("[...document.querySelectorAll('#photo-grid .photo-card')].map(c => c.id)")
    assert len(set(ids)) == 130
    # The photo view steps through the results as listed.
    tiles(page).nth(shown).locator(".photo-link").click()
    expect(page.locator("#prev-photo")).to_be_visible()
    expect(page.locator("#back-to-album")).to_contain_text("Photos labelled dog")
    expect(page.locator("#photo")).to_have_attribute("data-ready", "1")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#photo")).to_have_attribute("data-image-id", ids[shown - 1][6:])
    expect(page.locator("#photo")).to_have_attribute("data-ready", "1")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"/search\?label=dog$"))


def test_an_album_of_10000_photos_opens_within_a_second(page: Page, web: WebOnly) -> None:
    user = sign_up(page, web)
    album_url = create_album(page, "Ten thousand")
    web.add_many(user, "Ten thousand", 10_000)
    page.goto(web.url + "/")  # the albums list counts them in one query
    listed = page.locator(".album-card[data-album-name='Ten thousand'] .photo-count")
    expect(listed).to_have_attribute("data-count", "10000")

    page.goto(album_url)
    gallery_ready(page)
    expect(tiles(page).first.locator("img.thumb")).to_have_js_property("complete", True)
    ready = page.evaluate("performance.getEntriesByName('gallery-ready')[0].startTime")
    assert ready <= 1000, f"the first screen took {ready:.0f} ms"
    weight = page.evaluate(
        """() => performance.getEntriesByType('navigation').concat(
                performance.getEntriesByType('resource')).reduce((n, e) => n + e.transferSize, 0)"""
    )
    count = tiles(page).count()
    assert count <= 200, f"{count} tiles on the first screen"
    assert weight < 1_500_000, f"{weight} bytes for the first screen"
    no_sideways_scroll(page, "10,000 photos")
    print(f"10,000 photos: first screen in {ready:.0f} ms, {weight} bytes, {count} tiles")
    shot(page, "gallery-10000")
