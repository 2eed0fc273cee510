"""The reconciler re-sends the workflow of images whose event was lost, and only those."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from imagerec.config import (
    DEFAULT_STUCK_AFTER_SECONDS,
    DEFAULT_UNTOUCHED_AFTER_SECONDS,
    load_settings,
    stuck_after_seconds,
)
from imagerec.db import session_factory
from imagerec.events import UPLOADED, event_data
from imagerec.models import Album, Image, Status, User
from imagerec.states import Patience
from tests.recording_sink import RecordingSink
from tests.runner_support import broker, ref, sequence, trigger
from workflows.manifests import (
    STUCK_MARGIN,
    load_manifests,
    retry_budget,
    stuck_threshold,
    untouched_threshold,
)
from workflows.reconciler import Reconciler, resend_stuck, sweep_orphans

AGO = datetime.now(UTC) - timedelta(hours=1)
FIVE_MINUTES = Patience(uploaded=300, processing=300)


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
        sent = resend_stuck(s, sink.url, FIVE_MINUTES)
    assert sorted(sent) == ["img0", "img1"]
    assert sorted(e["subject"] for e in sink.events) == ["img0", "img1"]
    event = next(e for e in sink.events if e["subject"] == "img0")
    assert event["type"] == UPLOADED
    assert event_data(event)["blobKey"].endswith("/img0.jpg")
    with backend.session() as s:
        # Touched: not sent again on the next round.
        assert resend_stuck(s, sink.url, FIVE_MINUTES) == []
        assert s.get(Image, "img1").status == Status.UPLOADED


def test_unreachable_sink_changes_nothing(backend, sink):
    _images(backend, (Status.UPLOADED, AGO))
    sink.close()
    with backend.session() as s:
        assert resend_stuck(s, sink.url, FIVE_MINUTES) == []
    with backend.session() as s:
        assert s.get(Image, "img0").updated_at.replace(tzinfo=UTC) < AGO + timedelta(seconds=1)


def test_rejecting_sink_leaves_the_image_for_later(backend):
    sink = RecordingSink(status=500)
    try:
        _images(backend, (Status.UPLOADED, AGO))
        with backend.session() as s:
            assert resend_stuck(s, sink.url, FIVE_MINUTES) == []
        with backend.session() as s:
            assert resend_stuck(s, sink.url, FIVE_MINUTES) == []
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
            assert resend_stuck(s, sink.url, FIVE_MINUTES) == ["img0"]
    finally:
        sink.close()
    with backend.session() as s:
        assert s.get(Image, "img0").status == Status.DONE


def test_one_refused_photo_does_not_hold_up_the_others(backend):
    _images(backend, (Status.UPLOADED, AGO), (Status.UPLOADED, AGO + timedelta(seconds=1)))
    sink = RecordingSink(status=400)
    try:
        with backend.session() as s:
            assert resend_stuck(s, sink.url, FIVE_MINUTES) == []
        assert [e["subject"] for e in sink.events] == ["img0", "img1"]
    finally:
        sink.close()


# -- the stuck threshold: the manifests' retry budget ------------------------------------------

KNATIVE = Path(__file__).resolve().parents[1] / "knative"


def test_the_default_stuck_threshold_is_the_deployed_manifests_retry_budget():
    derived = stuck_threshold(load_manifests(KNATIVE))
    assert derived == DEFAULT_STUCK_AFTER_SECONDS, (
        f"knative/ now gives {derived}: set imagerec.config.DEFAULT_STUCK_AFTER_SECONDS to it"
    )
    assert stuck_after_seconds({}) == derived


def test_the_setting_overrides_the_derived_threshold_for_the_reconciler_and_the_web():
    env = {"IMAGEREC_STUCK_AFTER_SECONDS": "90"}
    assert stuck_after_seconds(env) == 90.0
    assert load_settings(env).stuck_after_seconds == 90.0
    assert load_settings({}).stuck_after_seconds == DEFAULT_STUCK_AFTER_SECONDS


def _write(tmp_path, documents) -> Path:
    (tmp_path / "routing.yaml").write_text(yaml.safe_dump_all(documents))
    return tmp_path


def test_the_budget_sums_every_leg_of_every_hop_on_the_longest_path(tmp_path):
    retries = {"retry": 2, "backoffPolicy": "exponential", "backoffDelay": "PT1S"}
    dls = {"deadLetterSink": ref("dead")}
    documents = [
        broker(),
        # 3 attempts x 10 s + waits 1 + 2 = 33 s per leg; call, reply and dead letter legs.
        trigger("first", ref("a"), {"type": "x"}, delivery={**retries, "timeout": "PT10S", **dls}),
        # A Sequence: the Trigger's hop has no reply leg (the channel answers with no body).
        trigger("second", ref("seq", "Sequence"), {"type": "y"}, delivery={"timeout": "PT5S"}),
        sequence(
            "seq",
            [
                {**ref("b"), "delivery": {"timeout": "PT20S", "retry": 1}},  # 2 x 20, + reply
                {**ref("c"), "delivery": {"timeout": "PT7S"}},  # last step, no reply: 7
            ],
        ),
    ]
    manifests = load_manifests(_write(tmp_path, documents))
    first = 33 * 3
    second = 5 + (40 * 2) + 7
    assert retry_budget(manifests) == first + second
    assert stuck_threshold(manifests) == first + second + STUCK_MARGIN


def test_a_hop_without_timeout_counts_the_services_request_limit(tmp_path):
    manifests = load_manifests(_write(tmp_path, [broker(), trigger("t", ref("a"))]))
    # No delivery anywhere: the Broker default (10 retries, exponential PT0.2S), 300 s each,
    # the call and the reply legs (no dead-letter sink).
    waits = sum(0.2 * 2 ** (k - 1) for k in range(1, 11))
    assert retry_budget(manifests) == pytest.approx(2 * (11 * 300 + waits))


def test_the_reconciler_leaves_work_younger_than_the_threshold(backend, sink):
    threshold = stuck_after_seconds({})
    now = datetime.now(UTC)
    _images(
        backend,
        (Status.PROCESSING, now - timedelta(seconds=threshold - 60)),
        (Status.PROCESSING, now - timedelta(seconds=threshold + 60)),
    )
    with backend.session() as session:
        sent = resend_stuck(session, sink.url, Patience(threshold, threshold), now=now)
    assert sent == ["img1"]


# -- lost work: untouched uploads in minutes, everything a restarted runner held at once -------


def test_the_default_untouched_threshold_is_the_first_hops_budget():
    derived = untouched_threshold(load_manifests(KNATIVE), UPLOADED)
    assert derived == DEFAULT_UNTOUCHED_AFTER_SECONDS, (
        f"knative/ now gives {derived}: set imagerec.config.DEFAULT_UNTOUCHED_AFTER_SECONDS"
    )
    # The call and the dead-letter legs of on-uploaded: 6 attempts of 75 s, waits 1+2+4+8+16.
    assert derived == 2 * (6 * 75 + 31) + STUCK_MARGIN
    assert load_settings({}).patience == Patience(derived, DEFAULT_STUCK_AFTER_SECONDS)
    # Never more patient with an untouched upload than with a photo in processing.
    assert load_settings({"IMAGEREC_STUCK_AFTER_SECONDS": "90"}).patience == Patience(90, 90)


def test_an_untouched_upload_is_re_sent_within_minutes_a_processing_one_is_not(backend, sink):
    now = datetime.now(UTC)
    patience = load_settings({}).patience
    past_first_hop = now - timedelta(seconds=patience.uploaded + 60)
    _images(
        backend,
        (Status.UPLOADED, past_first_hop),  # its event was lost before extract-metadata
        (Status.PROCESSING, past_first_hop),  # a later hop may still be retrying it
        (Status.UPLOADED, now - timedelta(seconds=patience.uploaded - 60)),
    )
    with backend.session() as session:
        assert resend_stuck(session, sink.url, patience, now=now) == ["img0"]


def test_work_written_before_the_runner_restarted_is_re_sent_at_once(backend, sink):
    now = datetime.now(UTC)
    restarted = now - timedelta(seconds=2)
    _images(
        backend,
        (Status.UPLOADED, restarted - timedelta(seconds=1)),
        (Status.PROCESSING, restarted - timedelta(seconds=1)),
        (Status.PROCESSING, restarted + timedelta(seconds=1)),  # the new runner has it
        (Status.FAILED, restarted - timedelta(seconds=1)),  # a person's to retry
    )
    with backend.session() as session:
        sent = resend_stuck(
            session, sink.url, load_settings({}).patience, now=now, carrier_since=restarted
        )
    assert sorted(sent) == ["img0", "img1"]


class TakingUpSink(RecordingSink):
    """A broker whose extract-metadata takes the photo up before the reconciler hears back."""

    def __init__(self, backend) -> None:
        super().__init__()
        self.backend = backend

    def on_event(self, event) -> None:
        with self.backend.session() as s:
            s.get(Image, event["subject"]).status = Status.PROCESSING
            s.commit()


def test_a_photo_taken_up_while_being_re_sent_stays_processing(backend):
    _images(backend, (Status.UPLOADED, AGO))
    sink = TakingUpSink(backend)
    try:
        with backend.session() as s:
            assert resend_stuck(s, sink.url, FIVE_MINUTES) == ["img0"]
    finally:
        sink.close()
    with backend.session() as s:
        assert s.get(Image, "img0").status == Status.PROCESSING


# -- the orphan sweep --------------------------------------------------------------------------


def test_blobs_no_row_owns_are_deleted_after_the_grace_period(backend):
    _images(backend, (Status.DONE, AGO), (Status.DONE, AGO))
    blobs = backend.blobs()
    with backend.session() as s:
        owner = s.get(Image, "img0")
        user_id, album_id = owner.user_id, owner.album_id
        moved = s.get(Image, "img1")
        moved.blob_key = f"{user_id}/777/img1.heic"  # moved: its old keys were left behind
        s.commit()
    kept = [
        f"{user_id}/{album_id}/img0.jpg",
        f"{user_id}/{album_id}/img0.thumb.jpg",
        f"{user_id}/777/img1.heic",
        f"{user_id}/777/img1.work.jpg",
        "not/one/of.ours",  # the service never made it: left alone
    ]
    orphans = [
        f"{user_id}/{album_id}/img1.jpg",
        f"{user_id}/{album_id}/img1.thumb.jpg",
        f"{user_id}/999/gone.jpg",  # an upload whose row was never committed
    ]
    for key in kept + orphans:
        blobs.put(key, b"bytes")
    time.sleep(2.5)
    young = f"{user_id}/{album_id}/arriving.jpg"  # an emitter's, its event on its way
    blobs.put(young, b"bytes")

    with backend.session() as s:
        assert sorted(sweep_orphans(s, blobs, grace=1.5)) == sorted(orphans)

    assert all(blobs.exists(key) for key in [*kept, young])
    assert not any(blobs.exists(key) for key in orphans)


def test_imagerec_devs_reconciler_sweeps_orphans_too(backend, sink):
    blobs = backend.blobs()
    blobs.put("1/1/orphan.jpg", b"bytes")
    time.sleep(1.5)
    reconciler = Reconciler(
        sessions=session_factory(backend.database_url),
        sink=sink.url,
        patience=FIVE_MINUTES,
        interval=0.1,
        blobs=blobs,
        orphan_grace=1.0,
    ).start()
    try:
        deadline = time.monotonic() + 10
        while blobs.exists("1/1/orphan.jpg") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        reconciler.stop()
    assert not blobs.exists("1/1/orphan.jpg")
