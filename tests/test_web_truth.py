"""The web believes only its rows: keys it serves or deletes are derived from the original's
key, retries follow the core's state rules, and an upload that was stored is reported so."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from test_web_app import BUS, DOG, count, set_done

from imagerec.models import Image, Status

pytest_plugins = ["test_web_app"]


def _poisoned(backend, ann, bob) -> tuple[str, str]:
    """Bob's photo whose row names Ann's original as its thumbnail (what a forged labelled
    event once stored): (bob's image id, ann's original key)."""
    victim = ann.upload_one(ann.create_album(), DOG)
    mine = bob.upload_one(bob.create_album(), BUS)
    with backend.session() as db:
        ann_key = db.get(Image, victim["id"]).blob_key
    set_done(backend, mine["id"], thumbnail_key=ann_key)
    return mine["id"], ann_key


def test_a_stored_thumbnail_key_naming_another_users_original_is_not_served(backend, ann, bob):
    image_id, ann_key = _poisoned(backend, ann, bob)

    response = bob.get(f"/photos/{image_id}/thumbnail")

    assert response.status_code in (404, 503)  # bob's own (derived) thumbnail does not exist
    assert response.get_data() != backend.blobs().get(ann_key)


def test_deleting_a_photo_deletes_only_its_own_blobs(backend, ann, bob):
    image_id, ann_key = _poisoned(backend, ann, bob)

    assert bob.api("DELETE", f"/api/images/{image_id}").status_code == 204

    assert backend.blobs().exists(ann_key)


@pytest.mark.parametrize("status", [Status.DONE, Status.REJECTED])
def test_a_finished_photo_does_not_retry(backend, ann, status):
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=status)

    response = ann.api("POST", f"/api/images/{image['id']}/retry")

    assert response.status_code == 409
    with backend.session() as db:
        assert db.get(Image, image["id"]).status == status


def test_a_photo_finished_while_its_retry_was_asked_for_stays_finished(
    backend, ann, app, monkeypatch
):
    """The retry read the photo as failed; the pipeline finished it before the retry wrote."""
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=Status.FAILED)
    import web.actions

    real_retry = web.actions.states.retry

    def finish_first(session, row, *args, **kwargs):
        set_done(backend, image["id"], status=Status.DONE)
        return real_retry(session, row, *args, **kwargs)

    monkeypatch.setattr(web.actions.states, "retry", finish_first)

    response = ann.api("POST", f"/api/images/{image['id']}/retry")

    assert response.status_code == 409
    with backend.session() as db:
        assert db.get(Image, image["id"]).status == Status.DONE


def test_an_upload_stored_before_the_database_went_away_is_reported_stored(
    backend, ann, monkeypatch
):
    album_id = ann.create_album()
    real_commit = Session.commit

    def commit_then_lose_the_database(session):
        real_commit(session)

        def refuse(*args, **kwargs):
            raise sqlalchemy.exc.OperationalError("SELECT", {}, OSError("server closed"))

        monkeypatch.setattr(Engine, "connect", refuse)

    monkeypatch.setattr(Session, "commit", commit_then_lose_the_database)

    response = ann.upload(album_id, DOG)

    monkeypatch.undo()
    assert response.status_code == 201, response.json
    stored = response.json["images"][0]
    assert stored["status"] == "uploaded" and stored["detections"] == []
    assert count(backend, Image) == 1
    with backend.session() as db:
        assert db.get(Image, stored["id"]).file_name == DOG.name
