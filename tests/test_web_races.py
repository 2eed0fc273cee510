"""A person's actions racing each other and the pipeline, on both backends: retries and moves
are conditional (no photo stranded in processing with an event naming its old album), retries
are accepted once, and an album deleted during an upload leaves neither a 500 nor blobs."""

from __future__ import annotations

from test_web_app import BUS, DOG, make_app, set_done, sign_up

from imagerec.blobstore import album_prefix, original_key, thumbnail_key
from imagerec.events import UPLOADED, event_data, parse_event
from imagerec.models import Album, Image, Status

pytest_plugins = ["test_web_app"]


def _row(backend, image_id: str) -> Image:
    with backend.session() as db:
        return db.get(Image, image_id)


def _uploaded_events(broker) -> list[dict]:
    events = [parse_event(r["headers"], r["body"]) for r in broker.requests]
    return [event_data(e) for e in events if e["type"] == UPLOADED]


# --- retries ---------------------------------------------------------------------------------


def test_a_retry_right_after_the_upload_is_refused(backend, ann):
    image = ann.upload_one(ann.create_album(), DOG)
    response = ann.api("POST", f"/api/images/{image['id']}/retry")
    assert response.status_code == 409
    assert response.json["error"] == (
        "dog.jpg is waiting already; it can be retried if it stays so for a while."
    )


def test_repeated_retries_of_a_failed_photo_are_accepted_once(backend, broker):
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    image = ann.upload_one(ann.create_album(), DOG)
    set_done(backend, image["id"], status=Status.FAILED, reason="boom")

    answers = [ann.api("POST", f"/api/images/{image['id']}/retry") for _ in range(8)]

    assert [a.status_code for a in answers] == [202] + [409] * 7
    assert "waiting already" in answers[1].json["error"]
    app.extensions["imagerec_events"].join()
    assert len(_uploaded_events(broker)) == 2  # the upload's, and one retry's


def test_a_move_that_slips_into_a_retry_wins_and_no_event_names_the_old_album(
    backend, broker, monkeypatch
):
    """The retry loaded the photo in album A; a move to B committed before the retry wrote."""
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    first, second = ann.create_album("A"), ann.create_album("B")
    image = ann.upload_one(first, DOG)
    set_done(backend, image["id"], status=Status.FAILED, reason="boom")
    app.extensions["imagerec_events"].join()
    import web.actions

    real_retry = web.actions.states.retry

    def move_first(session, row, *args, **kwargs):
        moved_key = original_key(ann.id, second, row.id, "jpg")
        backend.blobs().put(moved_key, DOG.read_bytes())
        with backend.session() as other:
            other.get(Image, row.id).album_id = second
            other.get(Image, row.id).blob_key = moved_key
            other.commit()
        return real_retry(session, row, *args, **kwargs)

    monkeypatch.setattr(web.actions.states, "retry", move_first)

    response = ann.api("POST", f"/api/images/{image['id']}/retry")

    assert response.status_code == 409, response.json
    assert response.json["error"] == "dog.jpg changed meanwhile; reload and try again."
    row = _row(backend, image["id"])
    assert (row.album_id, row.status) == (second, Status.FAILED)  # still retryable, in B
    app.extensions["imagerec_events"].join()
    assert [e["albumId"] for e in _uploaded_events(broker)] == [first]  # the upload's only


def test_a_retry_that_slips_into_a_move_wins_and_the_move_is_refused(backend, broker, monkeypatch):
    """The move loaded the photo as failed; a retry committed while it copied the blobs."""
    app = make_app(backend, SINK=broker.url)
    ann = sign_up(app, "ann")
    first, second = ann.create_album("A"), ann.create_album("B")
    image = ann.upload_one(first, DOG)
    set_done(backend, image["id"], status=Status.FAILED, reason="boom")
    store = type(backend.blobs())
    real_get = store.get
    retried = []

    def retry_meanwhile(self, key):
        if not retried:
            retried.append(key)
            set_done(backend, image["id"], status=Status.UPLOADED, reason=None)
        return real_get(self, key)

    monkeypatch.setattr(store, "get", retry_meanwhile)

    response = ann.api("PATCH", f"/api/images/{image['id']}", json={"albumId": second})

    monkeypatch.undo()
    assert retried, "the move never read a blob"
    assert response.status_code == 409, response.json
    assert "changed meanwhile" in response.json["error"]
    row = _row(backend, image["id"])
    # Where the retry's event says it is: the pipeline finds it.
    assert (row.album_id, row.status) == (first, Status.UPLOADED)
    assert row.blob_key == original_key(ann.id, first, image["id"], "jpg")
    assert backend.blobs().exists(row.blob_key)
    assert list(backend.blobs().ages(album_prefix(ann.id, second))) == []


# --- deleting an album while photos arrive ---------------------------------------------------


def test_deleting_an_album_removes_the_blobs_of_photos_it_never_loaded(backend, ann):
    album_id = ann.create_album()
    ann.upload_one(album_id, DOG)
    # A photo whose row was committed after the delete loaded the album's photos: the cascade
    # deletes its row, and only the album's prefix still names its blobs.
    late = original_key(ann.id, album_id, "late", "jpg")
    backend.blobs().put(late, BUS.read_bytes())
    backend.blobs().put(thumbnail_key(late), b"\xff\xd8\xff thumbnail")

    assert ann.api("DELETE", f"/api/albums/{album_id}").status_code == 204

    assert list(backend.blobs().ages(album_prefix(ann.id, album_id))) == []


def test_an_upload_into_an_album_deleted_meanwhile_is_refused_and_keeps_nothing(
    backend, ann, monkeypatch
):
    album_id = ann.create_album()
    store = type(backend.blobs())
    real_put = store.put

    def delete_album_after_put(self, key, data):
        real_put(self, key, data)
        with backend.session() as other:
            other.delete(other.get(Album, album_id))
            other.commit()

    monkeypatch.setattr(store, "put", delete_album_after_put)

    response = ann.upload(album_id, DOG)

    monkeypatch.undo()
    assert response.status_code == 404, response.json
    assert response.json["error"] == (
        "The album was deleted during the upload; dog.jpg was not kept."
    )
    assert list(backend.blobs().ages(album_prefix(ann.id, album_id))) == []
    with backend.session() as db:
        assert db.query(Image).count() == 0
