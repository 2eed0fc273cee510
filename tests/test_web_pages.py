"""What the pages show for each state, from rows the pipeline would write (simulated here);
EXIF strings and file names from the test data, escaped. The album page's tiles are drawn by its
script from the JSON API (tests/test_browser_gallery.py); the photo view and search are pages."""

from __future__ import annotations

import html
import re

import pytest
from conftest import IMAGES, manifest
from test_web_app import BUS, DOG, set_done

from imagerec.models import Status

pytest_plugins = ["test_web_app"]

SAMSUNG = next(e for e in manifest()["exif"] if e["file"] == "exif/samsung_digimax_i50.jpg")
GPS = next(e for e in manifest()["exif"] if e["gps"])


def _metadata_columns(entry: dict) -> dict:
    columns = {
        "exif_make": entry["make"],
        "exif_model": entry["model"],
        "width": entry["pixel_width"],
        "height": entry["pixel_height"],
        "file_size": entry["bytes"],
        "format": entry["format_by_content"],
        "orientation": entry["orientation"] or 1,
        "creation_time": entry["datetime_original"].replace(":", "-", 2).replace(" ", "T"),
    }
    if entry["gps"]:
        columns.update(latitude=entry["gps"]["latitude"], longitude=entry["gps"]["longitude"])
    return columns


def test_done_photo_shows_labels_and_metadata(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, IMAGES / SAMSUNG["file"])
    set_done(
        backend,
        image["id"],
        [("Dog", 0.873, [0.1, 0.2, 0.8, 0.9]), ("Person", 0.41, [0, 0, 0.5, 0.5])],
        **_metadata_columns(SAMSUNG),
    )
    card = ann.get(f"/photos/{image['id']}").text
    assert f'data-image-id="{image["id"]}" data-status="done"' in card
    chip = r'data-label="Dog" data-score="0.8730"\s+href="[^"]+">Dog <span class="score">87%'
    assert re.search(chip, card)
    assert 'data-label="Person"' in card
    model = SAMSUNG["model"]
    assert "<" in model and model not in card
    assert html.escape(model, quote=False) in card
    assert f"{SAMSUNG['pixel_width']} × {SAMSUNG['pixel_height']}" in card
    assert SAMSUNG["datetime_original"][:4] in card

    body = ann.get(f"/api/images/{image['id']}").json["image"]
    assert body["camera"] == {"make": SAMSUNG["make"], "model": model}
    assert body["labels"] == [{"label": "Dog", "score": 0.873}, {"label": "Person", "score": 0.41}]
    assert body["detections"][0] == {"label": "Dog", "score": 0.873, "box": [0.1, 0.2, 0.8, 0.9]}


def test_gps_becomes_a_map_link(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, IMAGES / GPS["file"])
    set_done(backend, image["id"], **_metadata_columns(GPS))
    lat, lon = GPS["gps"]["latitude"], GPS["gps"]["longitude"]
    gps = ann.get(f"/api/images/{image['id']}").json["image"]["gps"]
    assert gps["lat"] == lat and gps["lon"] == lon
    assert gps["mapUrl"].startswith(f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}")
    place = ann.get(f"/api/images/{image['id']}").json["image"]["display"]["place"]
    assert place == f"{abs(lat):.2f}° S, {lon:.2f}° E"  # the test photo is south of the equator
    page = ann.get(f"/photos/{image['id']}").text
    assert html.escape(gps["mapUrl"]) in page
    assert place in page


@pytest.mark.parametrize(
    ("status", "reason", "retry"),
    [
        (Status.UPLOADED, None, False),
        (Status.PROCESSING, None, False),
        (Status.REJECTED, "Not a supported image: the content is plain text.", False),
        (Status.FAILED, "detect-objects kept failing: model unavailable", True),
    ],
)
def test_each_state_has_its_badge_reason_and_retry(backend, ann, status, reason, retry):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, BUS)
    set_done(backend, image["id"], status=status, reason=reason)
    photo = ann.get(f"/photos/{image['id']}").text
    assert f'id="photo-status" data-status="{status}"' in photo
    assert ('id="retry-button"' in photo) is retry
    if reason:
        assert f'<p class="reason" id="photo-reason">{html.escape(reason)}</p>' in photo
    else:
        assert 'id="photo-reason"' not in photo


def test_filter_by_label(backend, ann):
    album_id = ann.create_album()
    dog = ann.upload_one(album_id, DOG)
    bus = ann.upload_one(album_id, BUS)
    set_done(backend, dog["id"], [("Dog", 0.9, [0, 0, 1, 1])])
    set_done(backend, bus["id"], [("Bus", 0.7, [0, 0, 1, 1]), ("Person", 0.3, [0, 0, 1, 1])])

    api = ann.get(f"/api/albums/{album_id}/images?label=Dog").json["images"]
    assert [i["id"] for i in api] == [dog["id"]]
    assert ann.get(f"/api/albums/{album_id}/images?label=Cat").json["images"] == []
    everything = ann.get(f"/api/albums/{album_id}/images").json["images"]
    assert {i["id"] for i in everything} == {dog["id"], bus["id"]}

    page = ann.get(f"/albums/{album_id}?label=Dog").text
    assert f'id="album" data-album-id="{album_id}" data-label="Dog"' in page
    assert re.search(r'class="filter-chip active" data-label="Dog"', page)
    unfiltered = ann.get(f"/albums/{album_id}").text
    for label in ("Bus", "Dog", "Person"):
        assert f'class="filter-chip" data-label="{label}"' in unfiltered


def test_a_label_asked_in_another_case_is_the_active_filter(backend, ann):
    album_id = ann.create_album()
    dog = ann.upload_one(album_id, DOG)
    set_done(backend, dog["id"], [("Dog", 0.9, [0, 0, 1, 1])])

    page = ann.get(f"/albums/{album_id}?label=dOG").text

    assert re.search(r'class="filter-chip active" data-label="Dog"', page)
    assert 'data-label="Dog"' in page.split('id="album"')[1].split(">")[0]


@pytest.mark.parametrize("action", ["delete", "retry"])
def test_acting_on_a_photo_keeps_the_albums_filter(backend, ann, action):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    set_done(backend, image["id"], [("Dog", 0.9, [0, 0, 1, 1])], status="failed")
    page = ann.get(f"/albums/{album_id}?label=Dog").text
    assert 'name="label" value="Dog"' in page

    response = ann.form(f"/photos/{image['id']}/{action}", {"label": "Dog"})

    assert response.status_code == 302
    assert response.headers["Location"] == f"/albums/{album_id}?label=Dog"


def test_photo_view_draws_boxes_and_all_metadata(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, IMAGES / SAMSUNG["file"])
    set_done(
        backend,
        image["id"],
        [("Dog", 0.9, [0.1, 0.2, 0.8, 0.9])],
        model="centernet",
        **_metadata_columns(SAMSUNG),
    )
    page = ann.get(f"/photos/{image['id']}").text
    assert f'src="/photos/{image["id"]}/display"' in page
    assert re.search(
        r'class="box" data-label="Dog" data-score="0.9000"\s+data-box="0.1,0.2,0.8,0.9"', page
    )
    assert 'class="box-label">Dog 90%' in page
    for field in ("taken", "camera", "dimensions", "bytes", "format", "model"):
        assert f'data-field="{field}"' in page, field
    # Orientation 1 (upright as stored) is the usual case: no line saying "1".
    assert 'data-field="orientation"' not in page
    assert SAMSUNG["model"] not in page
    assert 'id="delete-photo-button"' in page
    assert f'href="/albums/{album_id}"' in page


def test_rejected_photo_view_shows_no_image(backend, ann):
    image = ann.upload_one(ann.create_album(), IMAGES / "bad" / "text_named.jpg")
    set_done(backend, image["id"], status=Status.REJECTED, reason="Not an image.")
    page = ann.get(f"/photos/{image['id']}").text
    assert 'id="photo-image"' not in page and "Not an image." in page


def test_hostile_file_name_is_escaped(backend, ann):
    name = "<img src=x onerror=alert(1)>.jpg"
    album_id = ann.create_album()
    image = ann.upload_one(album_id, (DOG.read_bytes(), name))
    set_done(backend, image["id"], status=Status.REJECTED, reason=f"{name} is <b>bad</b>")
    page = ann.get(f"/photos/{image['id']}").text
    assert "<img src=x" not in page and "<b>bad</b>" not in page
    assert "&lt;img src=x onerror=" in page
    assert "<img src=x" not in ann.get(f"/albums/{album_id}").text  # its script inserts text only
    assert ann.get(f"/api/images/{image['id']}").json["image"]["fileName"] == name


def test_album_page_carries_what_its_script_needs(ann):
    album_id = ann.create_album()
    page = ann.get(f"/albums/{album_id}").text
    assert f'data-images-url="/api/albums/{album_id}/images"' in page
    assert f'data-upload-url="/api/albums/{album_id}/images"' in page
    assert '<template id="photo-card-template">' in page
    assert (
        '<script type="application/json" id="first-page">{"images": [], "nextCursor": null}' in page
    )
    assert 'id="file-input"' in page and "multiple" in page
    assert '<script src="/static/album.js">' in page
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    assert csrf == ann.csrf


def test_static_scripts_never_write_html(app):
    client = app.test_client()
    for name in ("album.js", "photo.js", "common.js"):
        source = client.get(f"/static/{name}").text
        assert "innerHTML" not in source and "outerHTML" not in source, name
        assert "insertAdjacentHTML" not in source and "document.write" not in source, name


def test_search_across_albums(backend, ann, bob):
    one, two = ann.create_album("One"), ann.create_album("Two")
    dog = ann.upload_one(one, DOG)
    dog_too = ann.upload_one(two, IMAGES / "exif" / "canon_40d.jpg")
    bus = ann.upload_one(two, BUS)
    set_done(backend, dog["id"], [("Dog", 0.9, [0, 0, 1, 1])])
    set_done(backend, dog_too["id"], [("Dog", 0.5, [0, 0, 1, 1])])
    set_done(backend, bus["id"], [("Bus", 0.7, [0, 0, 1, 1])])
    bobs = bob.upload_one(bob.create_album(), DOG)
    set_done(backend, bobs["id"], [("Dog", 0.9, [0, 0, 1, 1])])

    found = ann.get("/api/images?label=dog").json["images"]
    assert {i["id"] for i in found} == {dog["id"], dog_too["id"]}
    assert len(ann.get("/api/images").json["images"]) == 3
    assert ann.get("/api/labels").json["labels"] == [
        {"label": "Dog", "count": 2},
        {"label": "Bus", "count": 1},
    ]
    page = ann.get("/search?label=Dog").text
    assert 'data-count="2"' in page
    assert f'id="photo-{dog["id"]}"' in page and f'id="photo-{dog_too["id"]}"' in page
    assert f'id="photo-{bobs["id"]}"' not in page
    assert [i["id"] for i in bob.get("/api/images?label=Dog").json["images"]] == [bobs["id"]]


def test_search_page_without_a_label_lists_labels(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], [("Dog", 0.9, [0, 0, 1, 1])])
    page = ann.get("/search").text
    assert 'class="filter-chip" data-label="Dog"' in page and 'id="photo-grid"' not in page


def test_turned_photos_show_their_upright_size(backend, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    set_done(backend, image["id"], width=600, height=450, orientation=6)
    assert "450 × 600" in ann.get(f"/photos/{image['id']}").text
    body = ann.get(f"/api/images/{image['id']}").json["image"]
    assert (body["width"], body["height"], body["orientation"]) == (600, 450, 6)
