"""The photo state machine (imagerec.states), on both backends: the allowed moves, the
refused ones, redelivery as no change, and retries."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from pipeline import make_owner

from imagerec.models import Image, Status
from imagerec.states import (
    FINAL,
    IllegalTransition,
    Patience,
    Vanished,
    advance,
    may_follow,
    move,
    retry,
)


def everything_lost() -> dict:
    """Cutoffs by which every photo in flight counts as lost: what a retry starts again then."""
    return Patience(uploaded=0, processing=0).lost_before(datetime.now(UTC) + timedelta(seconds=5))


ALLOWED = {
    (Status.UPLOADED, Status.PROCESSING),
    (Status.UPLOADED, Status.DONE),
    (Status.UPLOADED, Status.REJECTED),
    (Status.UPLOADED, Status.FAILED),
    (Status.PROCESSING, Status.DONE),
    (Status.PROCESSING, Status.REJECTED),
    (Status.PROCESSING, Status.FAILED),
}


def _image(backend, status: Status) -> str:
    user_id, album_id = make_owner(backend)
    with backend.session() as session:
        session.add(
            Image(
                id="img",
                user_id=user_id,
                album_id=album_id,
                blob_key=f"{user_id}/{album_id}/img.jpg",
                file_name="a.jpg",
                size=1,
                status=status,
                reason="why" if status == Status.FAILED else None,
            )
        )
        session.commit()
    return "img"


def _status(backend, image_id: str) -> str:
    with backend.session() as session:
        return session.get(Image, image_id).status


def test_the_rules_are_exactly_the_documented_ones():
    moves = {(a, b) for a in Status for b in Status if a != b and may_follow(a, b)}
    assert moves == ALLOWED
    assert not any(may_follow(final, other) for final in FINAL for other in Status)


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("new", [s for s in Status if s != Status.UPLOADED])
def test_advance_moves_refuses_or_finds_it_done(backend, current, new):
    image_id = _image(backend, current)
    with backend.session() as session, session.begin():
        image = session.get(Image, image_id)
        if (current, new) in ALLOWED:
            assert advance(session, image, new) is True
            assert image.status == new
        elif current == new:
            assert advance(session, image, new) is False  # a redelivery: nothing to write
        else:
            with pytest.raises(IllegalTransition, match=f"is {current}; it cannot become {new}"):
                advance(session, image, new)
    expected = new if (current, new) in ALLOWED else current
    assert _status(backend, image_id) == expected


@pytest.mark.parametrize("current", list(Status))
def test_a_retry_starts_only_unfinished_photos_again(backend, current):
    image_id = _image(backend, current)
    with backend.session() as session, session.begin():
        moved = retry(session, session.get(Image, image_id), everything_lost())
    assert moved is (current not in FINAL)
    with backend.session() as session:
        image = session.get(Image, image_id)
        assert image.status == (Status.UPLOADED if moved else current)
        if moved:
            assert image.reason is None


def test_the_reconcilers_retry_leaves_a_failed_photo_for_a_person(backend):
    image_id = _image(backend, Status.FAILED)
    with backend.session() as session, session.begin():
        assert (
            retry(session, session.get(Image, image_id), everything_lost(), failed=False) is False
        )
    assert _status(backend, image_id) == Status.FAILED


def test_of_two_retries_at_once_only_one_starts_the_photo_again(backend):
    image_id = _image(backend, Status.FAILED)
    cutoffs = Patience(uploaded=30, processing=30).lost_before(datetime.now(UTC))
    first, second = backend.session(), backend.session()
    with first, second:
        first_row, second_row = first.get(Image, image_id), second.get(Image, image_id)
        assert retry(first, first_row, cutoffs) is True
        # The second waits for the first's row lock (PostgreSQL) or write lock (SQLite), then
        # finds the photo freshly `uploaded`: not lost, so not retried again.
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(retry, second, second_row, cutoffs)
            time.sleep(0.3)
            first.commit()
            assert waiting.result(timeout=30) is False
        second.rollback()


def test_a_retry_pins_the_album_it_was_loaded_in(backend):
    image_id = _image(backend, Status.FAILED)
    cutoffs = Patience(uploaded=30, processing=30).lost_before(datetime.now(UTC))
    with backend.session() as session:
        row = session.get(Image, image_id)
        with backend.session() as other:
            other.get(Image, image_id).blob_key = "1/999/img.jpg"  # moved meanwhile
            other.commit()
        assert retry(session, row, cutoffs) is False
    assert _status(backend, image_id) == Status.FAILED


def test_advance_on_a_row_deleted_meanwhile_is_refused_as_vanished(backend):
    image_id = _image(backend, Status.UPLOADED)
    with backend.session() as session:
        image = session.get(Image, image_id)
        with backend.session() as other:
            other.delete(other.get(Image, image_id))
            other.commit()
        with pytest.raises(Vanished, match="deleted meanwhile"):
            advance(session, image, Status.PROCESSING)


def test_a_move_is_refused_for_a_photo_in_flight(backend):
    image_id = _image(backend, Status.UPLOADED)
    with backend.session() as session, session.begin():
        assert move(session, session.get(Image, image_id), blob_key="1/2/img.jpg") is False
    with backend.session() as session, session.begin():
        session.get(Image, image_id).status = Status.DONE
    with backend.session() as session, session.begin():
        assert move(session, session.get(Image, image_id), blob_key="1/2/img.jpg") is True
