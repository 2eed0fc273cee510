"""Property-based attacks (Hypothesis) on every door a user inside the cluster can knock on:
the runner's broker ingress, each workflow step, and the web's JSON routes.

Whatever arrives, the answer is never a 5xx, and another user's rows and blobs stay byte for
byte what they were. The attacker (bob) knows the victim's (ann's) ids and keys and mixes them
into otherwise well-formed requests. Examples are few, derandomized and without deadlines, so
the suite takes well under a minute in CI and fails the same way every time.
"""

from __future__ import annotations

import copy
import io
import json
import string
import struct
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from bombs import jpeg_with_exif, png_with_exif
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from pipeline import event_for, make_owner, put_original, step_app
from sqlalchemy import select
from test_store_results import labelled
from test_web_app import DOG, make_app, sign_up

import imagerec.steps
from imagerec.blobstore import thumbnail_key
from imagerec.events import ACCEPTED, LABELLED, REJECTED, UPLOADED, encode, new_event
from imagerec.formats import register_heif_opener
from imagerec.images import register_upload
from imagerec.models import Album, Detection, Image, Status, User
from imagerec.pixels import peak_bytes_per_pixel
from imagerec.serve import BodyLimit, Refusal, RequestHead
from tests.runner_support import Subscriber, broker, ref, running, trigger
from web.bodies import MAX_JSON_BYTES
from workflows.runner import MAX_EVENT_BYTES

# PostgreSQL and Redis: where a value too large for its column is an error, not a string.
on_real_backend = pytest.mark.parametrize("backend", ["real"], indirect=True)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Values chosen to hit limits: lengths around column sizes, integers around 2**31 and 2**63,
# text PostgreSQL cannot hold (NUL, lone surrogates), keys that escape or name another user.
# Characters event text may not hold (imagerec/schemas): controls, line separators, bidi ones.
REFUSED_CHARS = st.sampled_from(
    ["\x00", "\x1b", "\x7f", "\x85", "\u061c", "\u200e", "\u200f"]
    + [chr(c) for c in range(0x2028, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)
EDGY_TEXT = st.sampled_from(
    ["", " ", "\x00", "\ud800", "../../etc/passwd", "a" * 33, "b" * 129, "c" * 256, "d" * 513]
    + ["photo\u202egpj.exe", "line\u2028break", "\u2066isolate\u2069"]
) | st.text(max_size=20)
EDGY_INT = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**53, 2**63, -(2**63) - 1, 10**30])


# --- the victim, and what must not change ----------------------------------------------------


def _victim(backend) -> dict[str, Any]:
    """Ann's finished photo, with its detections, original and thumbnail."""
    user_id, album_id = make_owner(backend, "ann")
    data = put_original(backend, DOG, user_id, album_id)
    with backend.session() as session:
        image = register_upload(session, data, backend.blobs())
        image.status = Status.DONE
        image.thumbnail_key = thumbnail_key(data["blobKey"])
        session.add(
            Detection(
                image_id=image.id,
                label="Dog",
                score=0.9,
                box_ymin=0,
                box_xmin=0,
                box_ymax=1,
                box_xmax=1,
            )
        )
        session.commit()
    backend.blobs().put(thumbnail_key(data["blobKey"]), b"ann's thumbnail")
    return data


def _snapshot(backend, user_id: int) -> dict[str, Any]:
    """Every row and blob of the user, column by column and byte by byte."""

    def rows(model, *where) -> list[dict[str, Any]]:
        with backend.session() as session:
            found = session.scalars(select(model).where(*where)).all()
            return sorted(
                ({c.key: getattr(r, c.key) for c in model.__table__.columns} for r in found),
                key=repr,
            )

    images = rows(Image, Image.user_id == user_id)
    blobs = {}
    for image in images:
        for key in (image["blob_key"], thumbnail_key(image["blob_key"])):
            blobs[key] = backend.blobs().get(key) if backend.blobs().exists(key) else None
    return {
        "user": rows(User, User.id == user_id),
        "albums": rows(Album, Album.user_id == user_id),
        "images": images,
        "detections": rows(Detection, Detection.image_id.in_([i["id"] for i in images] or ["-"])),
        "blobs": blobs,
    }


# --- the steps -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steps():
    return {
        name: step_app(name).test_client()
        for name in ("extract_metadata", "make_thumbnail", "store_results", "record_failure")
    }


@pytest.fixture
def scene(configured):
    """Ann's finished photo and Bob's uploaded one, in the real backend."""
    ann = _victim(configured)
    bob_user, bob_album = make_owner(configured, "bob")
    bob = put_original(configured, DOG, bob_user, bob_album)
    with configured.session() as session:
        register_upload(session, bob, configured.blobs())
        session.commit()
    return configured, ann, bob


def _mutated(base: dict[str, Any], ann: dict[str, Any], data) -> dict[str, Any]:
    event = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(0, 3), label="changes")):
        field = data.draw(st.sampled_from(sorted(event) + ["metadata", "extra"]), label="field")
        value = data.draw(st.sampled_from(["ann", "json", "text", "int"]), label="kind")
        if value == "ann" and field in ann:
            event[field] = ann[field]
        elif value == "ann":
            event["thumbnailKey"] = ann["blobKey"]
        elif value == "json":
            event[field] = data.draw(JSON, label="json")
        elif value == "text":
            event[field] = data.draw(EDGY_TEXT, label="text")
        else:
            event[field] = data.draw(EDGY_INT, label="int")
    if data.draw(st.booleans(), label="nested edge"):
        metadata = event.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("dimensions"), dict):
            metadata["dimensions"]["width"] = data.draw(EDGY_INT, label="width")
            metadata["creationTime"] = data.draw(EDGY_TEXT, label="creationTime")
        detections = event.get("detections")
        if isinstance(detections, list) and detections and isinstance(detections[0], dict):
            detections[0]["label"] = data.draw(EDGY_TEXT, label="label")
    return event


@on_real_backend
@FUZZ
@given(data=st.data())
def test_no_step_answers_5xx_or_touches_another_users_photo(steps, scene, data):
    backend, ann, bob = scene
    before = _snapshot(backend, ann["userId"])
    step, event_type = data.draw(
        st.sampled_from(
            [
                ("extract_metadata", UPLOADED),
                ("make_thumbnail", ACCEPTED),
                ("store_results", LABELLED),
                ("store_results", REJECTED),
                ("record_failure", UPLOADED),
            ]
        ),
        label="step",
    )
    base = labelled(bob) if event_type in (ACCEPTED, LABELLED) else {**bob, "reason": "no"}
    if event_type == ACCEPTED:
        base = {
            k: v
            for k, v in base.items()
            if k not in ("thumbnailKey", "detections", "labels", "model")
        }
    event = event_for(_mutated(base, ann, data), event_type)
    if data.draw(st.booleans(), label="subject is ann's"):
        event["subject"] = ann["imageId"]
    headers, body = encode(event, structured=data.draw(st.booleans(), label="structured"))

    response = steps[step].post("/", data=body, headers=headers)

    assert response.status_code < 500, (step, response.get_data(as_text=True))
    assert _snapshot(backend, ann["userId"]) == before


@on_real_backend
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_event_text_holding_a_control_or_bidi_character_is_a_400(steps, scene, data):
    """Wherever it sits in a free-text field, the answer names it and nothing is stored."""
    backend, ann, bob = scene
    field = data.draw(st.sampled_from(["fileName", "contentType"]), label="field")
    text = data.draw(st.text(alphabet=string.ascii_letters + " .日本", max_size=30), label="text")
    at = data.draw(st.integers(0, len(text)), label="at")
    character = data.draw(REFUSED_CHARS, label="character")
    fresh = {**bob, "imageId": "fuzz-" + data.draw(st.uuids(), label="id").hex}
    event = event_for({**fresh, field: text[:at] + character + text[at:]}, UPLOADED)
    headers, body = encode(event, structured=data.draw(st.booleans(), label="structured"))

    response = steps["extract_metadata"].post("/", data=body, headers=headers)

    assert response.status_code == 400, response.get_data(as_text=True)
    assert f"U+{ord(character):04X}" in response.get_data(as_text=True)
    with backend.session() as session:
        assert session.get(Image, fresh["imageId"]) is None


# --- the web's JSON routes -------------------------------------------------------------------


@pytest.fixture
def web_scene(backend):
    app = make_app(backend)
    ann = sign_up(app, "ann")
    album = ann.create_album("Ann's")
    photo = ann.upload_one(album, DOG)
    bob = sign_up(app, "bob")
    bob_album = bob.create_album("Bob's")
    yield backend, ann, album, photo, bob, bob_album
    app.extensions["imagerec_events"].join()


@on_real_backend
@FUZZ
@given(data=st.data())
def test_no_json_route_answers_5xx_or_touches_another_users_rows(web_scene, data):
    backend, ann, ann_album, ann_photo, bob, bob_album = web_scene
    before = _snapshot(backend, ann.id)
    bob.refresh_csrf()  # an earlier example may have signed bob in or up as someone else
    album_id = data.draw(st.sampled_from([ann_album, bob_album, 0, 2**31, 2**63]), label="album")
    image_id = data.draw(st.sampled_from([ann_photo["id"], "x" * 65, "nope", "%00"]), label="img")
    method, url = data.draw(
        st.sampled_from(
            [
                ("POST", "/api/session"),
                ("POST", "/api/users"),
                ("POST", "/api/albums"),
                ("PATCH", f"/api/albums/{album_id}"),
                ("DELETE", f"/api/albums/{album_id}"),
                ("POST", "/api/images/bulk"),
                ("PATCH", f"/api/images/{image_id}"),
                ("DELETE", f"/api/images/{image_id}"),
                ("POST", f"/api/images/{image_id}/retry"),
            ]
        ),
        label="route",
    )
    known = {
        "username": st.sampled_from(["ann", "bob", "ann\x00", "x" * 65]) | EDGY_TEXT,
        "password": EDGY_TEXT,
        "name": EDGY_TEXT,
        "action": st.sampled_from(["delete", "move", "x"]),
        "ids": st.lists(st.sampled_from([ann_photo["id"], "nope"]) | EDGY_TEXT, max_size=3),
        "albumId": st.sampled_from([ann_album, bob_album]) | EDGY_INT | JSON,
    }
    body = {k: data.draw(v, label=k) for k, v in known.items() if data.draw(st.booleans())}
    if data.draw(st.booleans(), label="raw"):
        payload = data.draw(
            st.sampled_from([b"[" * 5000, b"{", b'{"name": NaN}', b'"\\ud800"'])
            | st.binary(max_size=64),
            label="payload",
        )
    else:
        payload = json.dumps(body).encode()

    response = bob.api(method, url, data=payload, content_type="application/json")

    assert response.status_code < 500, (method, url, response.get_data(as_text=True))
    assert _snapshot(backend, ann.id) == before


# --- the web's limits: query numbers, cursors, and bodies against each route's cap ------------


@on_real_backend
@FUZZ
@given(data=st.data())
def test_no_listing_parameter_answers_5xx(web_scene, data):
    backend, ann, ann_album, *_ = web_scene
    number = st.sampled_from(["0", "1", "500", "501", "²", "٣", "+1", " 1", "1e3", "9" * 400])
    token = st.sampled_from(
        ["", "[" * 1500, "W1tbW1tb", "MDAwMS0wMS0wMVQwMDowMDowMA==", "OTk5OS0xMi0zMQ=="]
    )
    in_a_url = EDGY_TEXT.filter(lambda text: "\ud800" not in text)  # a client cannot send it
    params = {
        name: data.draw(value | in_a_url, label=name)
        for name, value in (
            ("limit", number),
            ("cursor", token),
            ("since", token),
            ("sort", st.sampled_from(["uploaded", "taken"])),
            ("order", st.sampled_from(["asc", "desc"])),
        )
        if data.draw(st.booleans())
    }
    url = data.draw(
        st.sampled_from(
            [f"/api/albums/{ann_album}/images", "/api/images", f"/api/albums/{ann_album}/changes"]
        ),
        label="url",
    )

    response = ann.client.get(url, query_string=params)

    assert response.status_code < 500, (url, params, response.get_data(as_text=True))


class _CountingBody(io.RawIOBase):
    """An endless body that counts what the app reads of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[: len(buffer)] = b"-" * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


@on_real_backend
@FUZZ
@given(data=st.data())
def test_no_route_reads_more_than_its_limit_or_answers_5xx(web_scene, data):
    backend, ann, ann_album, ann_photo, bob, bob_album = web_scene
    before = _snapshot(backend, ann.id)
    bob.refresh_csrf()
    app = bob.client.application
    whole = app.config["MAX_CONTENT_LENGTH"]
    method, url = data.draw(
        st.sampled_from(
            [
                ("POST", "/auth/signin"),
                ("POST", "/auth/signup"),
                ("POST", "/api/session"),
                ("POST", "/api/albums"),
                ("POST", f"/api/albums/{bob_album}/images"),
                ("POST", f"/albums/{bob_album}/photos"),
                ("POST", f"/api/albums/{ann_album}/images"),
                ("POST", "/no-such-route"),
            ]
        ),
        label="route",
    )
    mimetype = data.draw(
        st.sampled_from(
            ["application/json", "application/x-www-form-urlencoded",
             "multipart/form-data; boundary=x", "text/plain", ""]
        ),
        label="type",
    )  # fmt: skip
    size = data.draw(
        st.sampled_from([0, 1, MAX_JSON_BYTES, MAX_JSON_BYTES + 1, 2**20, whole, whole + 1]),
        label="declared size",
    )
    token = data.draw(st.sampled_from(["header", "query", "none", "wrong"]), label="token")
    headers = {"Content-Type": mimetype} if mimetype else {}
    if token == "header":
        headers["X-CSRF-Token"] = bob.csrf
    elif token == "wrong":
        headers["X-CSRF-Token"] = "x" * 43
    query = {"csrf_token": bob.csrf} if token == "query" else {}
    body = _CountingBody()
    environ = {"wsgi.input": body, "CONTENT_LENGTH": str(size)}
    # What the server's admission says before the body: never an error of its own.
    head = RequestHead(method, url, urlencode(query), _environ_headers(headers, bob), size)
    assert isinstance(app.admit_request(head), Refusal | BodyLimit)

    response = bob.client.open(
        url, method=method, headers=headers, query_string=query, environ_overrides=environ
    )

    assert response.status_code < 500, (method, url, response.get_data(as_text=True)[:300])
    upload = url.endswith(("/images", "/photos"))
    assert body.read_bytes <= (whole if upload else MAX_JSON_BYTES) + 64 * 1024
    if response.status_code == 413 and size > (whole if upload else MAX_JSON_BYTES):
        text = response.get_data(as_text=True)
        assert "limit for" in text or "Send at most" in text, text[:300]
    assert _snapshot(backend, ann.id) == before


def _environ_headers(headers: dict[str, str], account) -> dict[str, str]:
    """Request headers as the server hands them to `admit_request` (WSGI names, no HTTP_)."""
    named = {name.upper().replace("-", "_"): value for name, value in headers.items()}
    cookie = account.client.get_cookie("session")
    if cookie is not None:
        named["COOKIE"] = f"session={cookie.value}"
    return named


# --- the runner's broker ingress (the local runner's code: workflows/runner) -----------------

# What an HTTP client can send as a header value (requests refuses the rest before sending).
HEADER_TEXT = st.text(alphabet=string.printable.strip("\t\n\r\x0b\x0c"), max_size=60).map(str.strip)


@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    """One runner, with a subscriber that takes everything, for every example."""
    routing = [broker(), trigger("all", ref("sink"))]
    with (
        Subscriber() as sink,
        running(tmp_path_factory.mktemp("runner"), routing, {"sink": sink.url}) as (_, server),
    ):
        yield server.broker_url


@settings(FUZZ, max_examples=100)  # each accepted event is delivered: slower than the rest
@given(data=st.data())
def test_the_runner_ingress_never_answers_5xx(ingress, data):
    headers = {
        "ce-specversion": data.draw(st.sampled_from(["1.0", "0.3", "2.0", ""]), label="spec"),
        "ce-id": data.draw(HEADER_TEXT, label="id"),
        "ce-source": data.draw(HEADER_TEXT, label="source"),
        "ce-type": data.draw(st.sampled_from([UPLOADED, "t"]) | HEADER_TEXT, label="type"),
        "Content-Type": data.draw(
            st.sampled_from(["application/json", "application/cloudevents+json", "text/plain", ""]),
            label="content type",
        ),
    }
    for name in data.draw(st.lists(st.sampled_from(list(headers)), max_size=2), label="drop"):
        headers.pop(name, None)
    extra = data.draw(
        st.dictionaries(
            st.text(alphabet=string.ascii_lowercase + "-_", min_size=1, max_size=12).map(
                lambda n: "ce-" + n
            ),
            HEADER_TEXT,
            max_size=3,
        ),
        label="extensions",
    )
    body = data.draw(
        st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()), label="body"
    )
    response = requests.post(ingress, data=body, headers={**headers, **extra}, timeout=10)
    assert response.status_code < 500, (headers, extra, body[:100], response.text[:200])


@settings(FUZZ, max_examples=20)  # bodies of a mebibyte: a few are enough
@given(data=st.data())
def test_the_runner_ingress_refuses_bodies_over_its_limit_with_413(ingress, data):
    size = data.draw(
        st.integers(MAX_EVENT_BYTES - 16, MAX_EVENT_BYTES + 16)
        | st.integers(MAX_EVENT_BYTES, 3 * MAX_EVENT_BYTES),
        label="size",
    )
    headers, body = encode(new_event("t", "/tests", {"pad": ""}))
    body = body[:-2] + b"x" * max(0, size - len(body)) + b'"}'
    chunked = data.draw(st.booleans(), label="chunked")
    sent = iter([body]) if chunked else body  # an iterator: requests sends it chunked

    response = requests.post(ingress, data=sent, headers=headers, timeout=30)

    assert response.status_code == (413 if len(body) > MAX_EVENT_BYTES else 202), response.text


# --- extract-metadata's parse budgets (imagerec/exif.py, docs/budgets.md) -------------------

# Generous: a bomb cost minutes before the budgets; within them a photo takes milliseconds.
NOT_SLOW = 10.0
_TAGS = st.sampled_from([0x010F, 0x0110, 0x0112, 0x8769, 0x8825, 0xA005, 0x927C, 0x9003])
_ENTRY = st.tuples(
    _TAGS | st.integers(0, 0xFFFF),
    st.integers(0, 15),  # TIFF types 1-13, and ones no reader knows
    st.sampled_from([0, 1, 2, 4, 999, 1000, 2**16, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)


@st.composite
def exif_blocks(draw) -> bytes:
    """A TIFF block of IFDs whose counts, types, value counts and offsets are anything: a few
    entries drawn one by one, one of them repeated up to 65,535 times (where bombs live)."""
    order = draw(st.sampled_from(["<", ">"]))
    entries = draw(st.lists(_ENTRY, max_size=6))
    repeated = draw(st.tuples(_ENTRY, st.integers(0, 6_000)))
    declared = draw(st.none() | st.integers(0, 0xFFFF))
    body = b"".join(struct.pack(order + "HHII", *e) for e in entries)
    body += struct.pack(order + "HHII", *repeated[0]) * repeated[1]
    count = len(entries) + repeated[1] if declared is None else declared
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    following = draw(st.sampled_from([0, 8]) | st.integers(0, 2**32 - 1))
    return (
        header
        + struct.pack(order + "H", count & 0xFFFF)
        + body
        + struct.pack(order + "I", following)
    )


@pytest.fixture
def exif_owner(configured):
    return configured, make_owner(configured)


@on_real_backend
@settings(FUZZ, max_examples=100)
@given(block=exif_blocks(), container=st.sampled_from(["jpeg", "png"]))
def test_extract_metadata_answers_any_exif_quickly_and_never_5xx(
    steps, exif_owner, tmp_path, block, container
):
    backend, owner = exif_owner
    if container == "jpeg" and len(block) > 65_000:
        block = block[:65_000]  # what an APP1 segment can hold
    content = jpeg_with_exif(block) if container == "jpeg" else png_with_exif(block)
    path = tmp_path / f"{uuid.uuid4().hex}.{container}"
    path.write_bytes(content)
    data = put_original(backend, path, *owner)
    headers, body = encode(event_for(data, UPLOADED))

    started = time.monotonic()
    response = steps["extract_metadata"].post("/", data=body, headers=headers)

    assert time.monotonic() - started < NOT_SLOW
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ce-type"] in (ACCEPTED, REJECTED)


@on_real_backend
@settings(FUZZ, max_examples=40)
@given(
    kind=st.sampled_from(
        [("JPEG", "RGB", {}), ("JPEG", "CMYK", {"progressive": True}), ("PNG", "LA", {})]
        + [("PNG", "RGB", {}), ("WEBP", "RGB", {}), ("HEIF", "RGB", {})]
    ),
    size=st.tuples(st.integers(1, 400), st.integers(1, 300)),
    budget=st.integers(0, 3_000_000),
)
def test_extract_metadata_accepts_exactly_the_photos_that_fit_their_memory(
    steps, exif_owner, tmp_path, monkeypatch, kind, size, budget
):
    backend, owner = exif_owner
    register_heif_opener()
    fmt, mode, options = kind
    path = tmp_path / uuid.uuid4().hex
    PILImage.new(mode, size, "white" if mode != "CMYK" else (0, 0, 0, 0)).save(path, fmt, **options)
    monkeypatch.setenv("IMAGEREC_PHOTO_MEMORY", str(budget))
    imagerec.steps.settings.cache_clear()
    with PILImage.open(path) as opened:
        needed = size[0] * size[1] * peak_bytes_per_pixel(opened) + path.stat().st_size
    headers, body = encode(event_for(put_original(backend, path, *owner), UPLOADED))

    response = steps["extract_metadata"].post("/", data=body, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    expected = ACCEPTED if needed <= budget else REJECTED
    assert response.headers["ce-type"] == expected, (kind, size, budget, needed)
