"""The core: blob store backends, migrations, and CloudEvent parsing."""

from __future__ import annotations

import json

import pytest
import sqlalchemy
from sqlalchemy import inspect

from imagerec.blobstore import (
    BlobNotFound,
    BlobStoreUnavailable,
    check_key,
    original_key,
    thumbnail_key,
)
from imagerec.db import get_engine
from imagerec.events import (
    UPLOADED,
    BadEvent,
    encode,
    event_data,
    new_event,
    parse_event,
)
from imagerec.models import Album, Base, Image, User

UPLOAD = {
    "imageId": "abc123",
    "userId": 1,
    "albumId": 2,
    "blobKey": "1/2/abc123.jpg",
    "fileName": "holiday.jpg",
    "contentType": "image/jpeg",
    "size": 10,
}


def test_blob_round_trip_is_binary_safe(backend):
    blobs = backend.blobs()
    data = bytes(range(256)) * 10
    blobs.put("1/2/x.bin", data)
    assert blobs.exists("1/2/x.bin")
    assert blobs.get("1/2/x.bin") == data
    blobs.delete("1/2/x.bin")
    assert not blobs.exists("1/2/x.bin")
    with pytest.raises(BlobNotFound):
        blobs.get("1/2/x.bin")


def test_redis_blob_is_one_plain_string(real_backend):
    real_backend.blobs().put("7/8/y.jpg", b"\xff\xd8raw")
    import redis

    assert redis.Redis.from_url(real_backend.blob_url).get("7/8/y.jpg") == b"\xff\xd8raw"


def test_a_full_redis_is_unavailable_not_an_error(real_backend):
    """Redis at maxmemory with noeviction (knative/base/redis.yaml) refuses writes: a step then
    answers 503 and Knative retries, rather than failing the photo for good."""
    import redis

    server = redis.Redis.from_url(real_backend.blob_url)
    before = server.config_get("maxmemory")["maxmemory"]
    server.config_set("maxmemory", "1mb")
    try:
        with pytest.raises(BlobStoreUnavailable, match="full"):
            real_backend.blobs().put("7/8/big.jpg", b"x" * 2_000_000)
    finally:
        server.config_set("maxmemory", before)
    real_backend.blobs().put("7/8/big.jpg", b"x" * 2_000_000)


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs", "a/../b", "a//b", "", "a/b c", "1/" + "a" * 201]
)
def test_blob_keys_refuse_escapes(key):
    with pytest.raises(ValueError):
        check_key(key)


def test_keys_are_made_by_the_service():
    key = original_key(1, 2, "abc", "JPG")
    assert key == "1/2/abc.jpg"
    assert thumbnail_key(key) == "1/2/abc.thumb.jpg"


def test_migrations_create_the_schema(backend):
    tables = set(inspect(get_engine(backend.database_url)).get_table_names())
    assert {"users", "albums", "images", "detections", "alembic_version"} <= tables


def test_the_migrated_schema_is_what_the_models_declare(backend):
    """A model changed without its Alembic revision (or the reverse) shows up here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with get_engine(backend.database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_every_migration_goes_down_and_up_again(backend):
    from alembic import command

    from imagerec.db import alembic_config

    with backend.session() as s:
        s.add(Album(owner=User(username="kept", password_hash="x"), name="kept"))
        s.commit()
    config = alembic_config(backend.database_url)
    try:
        # Down one step with data in place: rebuilding `users` by copy would have cascaded
        # away its albums (SQLite).
        command.downgrade(config, "0001")
        with get_engine(backend.database_url).connect() as connection:
            names = connection.execute(sqlalchemy.text("SELECT name FROM albums")).scalars()
            assert list(names) == ["kept"]
        command.downgrade(config, "base")
    finally:
        command.upgrade(config, "head")
    tables = set(inspect(get_engine(backend.database_url)).get_table_names())
    assert {"users", "albums", "images", "detections"} <= tables


def test_deleting_a_user_cascades(backend):
    with backend.session() as s:
        user = User(username="u", password_hash="x")
        s.add(user)
        s.flush()
        album = Album(user_id=user.id, name="a")
        s.add(album)
        s.flush()
        s.add(
            Image(id="i1", user_id=user.id, album_id=album.id, blob_key="k", file_name="f", size=1)
        )
        s.commit()
        s.delete(user)
        s.commit()
        assert s.get(Image, "i1") is None


def _binary(data=UPLOAD, **attrs):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "/test",
        "ce-type": UPLOADED,
        "ce-subject": "abc123",
        "content-type": "application/json",
    }
    headers.update(attrs)
    return headers, json.dumps(data).encode()


def test_parse_binary_and_structured_agree():
    event = new_event(UPLOADED, "/test", UPLOAD, subject="abc123")
    for structured in (False, True):
        headers, body = encode(event, structured=structured)
        parsed = parse_event(headers, body)
        assert parsed["type"] == UPLOADED
        assert event_data(parsed) == UPLOAD


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"ce-id": " "}, "'id'"),
        ({"ce-image-id": "x"}, "extension"),
        ({"content-type": "application/cloudevents-batch+json"}, "batched"),
    ],
)
def test_parse_refuses_what_knative_refuses(headers, message):
    h, body = _binary(**headers)
    with pytest.raises(BadEvent, match=message):
        parse_event(h, body)


def test_not_a_cloudevent():
    with pytest.raises(BadEvent, match="not a CloudEvent"):
        parse_event({"content-type": "application/json"}, b"{}")


@pytest.mark.parametrize(
    "change, where",
    [
        ({"size": "ten"}, "size"),
        ({"imageId": "../x"}, "imageId"),
        ({"userId": None}, "userId"),
    ],
)
def test_upload_data_is_validated_against_its_schema(change, where):
    data = {**UPLOAD, **change}
    h, body = _binary(data)
    with pytest.raises(BadEvent, match=where):
        event_data(parse_event(h, body))


def test_missing_field_is_named():
    data = {k: v for k, v in UPLOAD.items() if k != "blobKey"}
    h, body = _binary(data)
    with pytest.raises(BadEvent, match="blobKey"):
        event_data(parse_event(h, body))


def test_subject_must_be_the_image_id():
    h, body = _binary(**{"ce-subject": "other"})
    with pytest.raises(BadEvent, match="subject"):
        event_data(parse_event(h, body))


def test_migration_0006_keeps_accounts_that_differ_only_by_case(backend):
    """Before 0006 "Alice" and "alice" could both sign up. Both rows survive the migration,
    down and up again; the older one owns the folded name, and each keeps its exact name."""
    from alembic import command

    from imagerec.db import alembic_config

    config = alembic_config(backend.database_url)
    command.downgrade(config, "0005")
    engine = get_engine(backend.database_url)
    with engine.begin() as connection:
        for name in ("Alice", "alice", "bob"):
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO users (username, password_hash, session_epoch, created_at) "
                    "VALUES (:name, 'x', 0, CURRENT_TIMESTAMP)"
                ),
                {"name": name},
            )

    def rows() -> list[tuple]:
        with engine.connect() as connection:
            query = "SELECT username, username_folded FROM users ORDER BY id"
            return [tuple(row) for row in connection.execute(sqlalchemy.text(query))]

    command.upgrade(config, "head")
    assert rows() == [("Alice", "alice"), ("alice", None), ("bob", "bob")]
    command.downgrade(config, "0005")
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT username FROM users ORDER BY id"))
        assert list(names.scalars()) == ["Alice", "alice", "bob"]
    command.upgrade(config, "head")
    assert rows() == [("Alice", "alice"), ("alice", None), ("bob", "bob")]
    # A new account takes no casing of a name in use.
    with pytest.raises(sqlalchemy.exc.IntegrityError), backend.session() as s:
        s.add(User(username="BOB", password_hash="x"))
        s.commit()
