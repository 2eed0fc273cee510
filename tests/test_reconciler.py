"""The reconciler re-sends the workflow of images whose event was lost, and only those."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagerec.events import UPLOADED, event_data
from imagerec.models import Album, Image, Status, User
from tests.recording_sink import RecordingSink
from workflows.reconciler import resend_stuck

AGO = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def sink():
    sink = RecordingSink()
    yield sink
    sink.close()


def _images(backend, *statuses_and_ages):
    with backend.session() as s:
        user = User(username="ann", password_hash="x")
        s.add(user)
        s.flush()
        album = Album(user_id=user.id, name="trip")
        s.add(album)
        s.flush()
        for n, (status, updated) in enumerate(statuses_and_ages):
            s.add(
                Image(
                    id=f"img{n}",
                    user_id=user.id,
                    album_id=album.id,
                    blob_key=f"{user.id}/{album.id}/img{n}.jpg",
                    file_name=f"p{n}.jpg",
                    content_type="image/jpeg",
                    size=10,
                    status=status,
                    created_at=updated,
                    updated_at=updated,
                )
            )
        s.commit()


def test_stuck_images_are_sent_again_once(backend, sink):
    fresh = datetime.now(UTC)
    _images(
        backend,
        (Status.UPLOADED, AGO),
        (Status.PROCESSING, AGO),
        (Status.UPLOADED, fresh),
        (Status.FAILED, AGO),
        (Status.DONE, AGO),
        (Status.REJECTED, AGO),
    )
    with backend.session() as s:
        sent = resend_stuck(s, sink.url, timedelta(minutes=5))
    assert sorted(sent) == ["img0", "img1"]
    assert sorted(e["subject"] for e in sink.events) == ["img0", "img1"]
    event = next(e for e in sink.events if e["subject"] == "img0")
    assert event["type"] == UPLOADED
    assert event_data(event)["blobKey"].endswith("/img0.jpg")
    with backend.session() as s:
        # Touched: not sent again on the next round.
        assert resend_stuck(s, sink.url, timedelta(minutes=5)) == []
        assert s.get(Image, "img1").status == Status.UPLOADED


def test_unreachable_sink_changes_nothing(backend, sink):
    _images(backend, (Status.UPLOADED, AGO))
    sink.close()
    with backend.session() as s:
        assert resend_stuck(s, sink.url, timedelta(minutes=5)) == []
    with backend.session() as s:
        assert s.get(Image, "img0").updated_at.replace(tzinfo=UTC) < AGO + timedelta(seconds=1)


def test_rejecting_sink_leaves_the_image_for_later(backend):
    sink = RecordingSink(status=500)
    try:
        _images(backend, (Status.UPLOADED, AGO))
        with backend.session() as s:
            assert resend_stuck(s, sink.url, timedelta(minutes=5)) == []
        with backend.session() as s:
            assert resend_stuck(s, sink.url, timedelta(minutes=5)) == []
        assert len(sink.events) == 2
    finally:
        sink.close()


class FinishingSink(RecordingSink):
    """A broker that answers only once the pipeline is through (the stock in-memory channel
    can): the photo is done before the reconciler hears back."""

    def __init__(self, backend) -> None:
        super().__init__()
        self.backend = backend

    def on_event(self, event) -> None:
        with self.backend.session() as s:
            s.get(Image, event["subject"]).status = Status.DONE
            s.commit()


def test_a_photo_finished_while_being_re_sent_stays_done(backend):
    _images(backend, (Status.PROCESSING, AGO))
    sink = FinishingSink(backend)
    try:
        with backend.session() as s:
            assert resend_stuck(s, sink.url, timedelta(minutes=5)) == ["img0"]
    finally:
        sink.close()
    with backend.session() as s:
        assert s.get(Image, "img0").status == Status.DONE


def test_one_refused_photo_does_not_hold_up_the_others(backend):
    _images(backend, (Status.UPLOADED, AGO), (Status.UPLOADED, AGO + timedelta(seconds=1)))
    sink = RecordingSink(status=400)
    try:
        with backend.session() as s:
            assert resend_stuck(s, sink.url, timedelta(minutes=5)) == []
        assert [e["subject"] for e in sink.events] == ["img0", "img1"]
    finally:
        sink.close()
