"""Trigger filters as the broker-filter evaluates them (docs/knative.md §3 and §11.3)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.runner_support import FakeClock, Subscriber, broker, post_event, ref, running, trigger
from workflows.filters import trigger_filter
from workflows.manifests import ManifestError

UPLOADED = {
    "specversion": "1.0",
    "id": "1",
    "source": "/web",
    "type": "dev.imagerec.image.uploaded",
}
WITH_SUBJECT = {**UPLOADED, "subject": "img-1"}
WITH_EXTENSION = {**UPLOADED, "tenant": "acme", "empty": ""}

ATTRIBUTE_CASES = [
    # (filter.attributes, event attributes, passes)
    ({}, UPLOADED, True),
    ({"type": "dev.imagerec.image.uploaded"}, UPLOADED, True),
    ({"type": "dev.imagerec.image.accepted"}, UPLOADED, False),
    ({"type": "DEV.imagerec.image.uploaded"}, UPLOADED, False),  # case-sensitive
    ({"type": "dev.imagerec.image.uploaded", "source": "/web"}, UPLOADED, True),
    ({"type": "dev.imagerec.image.uploaded", "source": "/other"}, UPLOADED, False),  # AND
    ({"subject": ""}, WITH_SUBJECT, True),  # "" = present and non-empty
    ({"subject": ""}, UPLOADED, False),
    ({"tenant": ""}, WITH_EXTENSION, True),
    ({"empty": ""}, WITH_EXTENSION, False),
    ({"tenant": "acme"}, WITH_EXTENSION, True),
    ({"tenant": "acme"}, UPLOADED, False),  # a missing extension never matches
]


@pytest.mark.parametrize("attributes, event, passes", ATTRIBUTE_CASES)
def test_filter_attributes(attributes, event, passes):
    matches, _ = trigger_filter({"attributes": attributes}, None)
    assert matches(event) is passes


FILTERS_CASES = [
    # (filters, event attributes, passes)
    ([{"exact": {"type": "dev.imagerec.image.uploaded"}}], UPLOADED, True),
    ([{"exact": {"type": "dev.imagerec.image"}}], UPLOADED, False),
    ([{"prefix": {"type": "dev.imagerec."}}], UPLOADED, True),
    ([{"prefix": {"type": "Dev.imagerec."}}], UPLOADED, False),
    ([{"suffix": {"type": ".uploaded"}}], UPLOADED, True),
    ([{"prefix": {"type": "dev."}}, {"suffix": {"type": ".accepted"}}], UPLOADED, False),  # ALL
    ([{"any": [{"exact": {"type": "x"}}, {"suffix": {"type": "uploaded"}}]}], UPLOADED, True),
    ([{"any": [{"exact": {"type": "x"}}, {"exact": {"type": "y"}}]}], UPLOADED, False),
    ([{"all": [{"prefix": {"type": "dev"}}, {"exact": {"source": "/web"}}]}], UPLOADED, True),
    ([{"not": {"exact": {"type": "dev.imagerec.image.uploaded"}}}], UPLOADED, False),
    ([{"not": {"exact": {"type": "other"}}}], UPLOADED, True),
    # A missing subject reads as "": prefix fails, not(exact) passes.
    ([{"prefix": {"subject": "img"}}], UPLOADED, False),
    ([{"prefix": {"subject": "img"}}], WITH_SUBJECT, True),
    ([{"not": {"exact": {"subject": "img-1"}}}], UPLOADED, True),
    # A missing time reads as the zero time; a missing extension is missing.
    ([{"prefix": {"time": "0001-01-01T00:00:00"}}], UPLOADED, True),
    ([{"prefix": {"tenant": "a"}}], UPLOADED, False),
    ([{"not": {"exact": {"tenant": "acme"}}}], UPLOADED, True),
    ([{"suffix": {"tenant": "me"}}], WITH_EXTENSION, True),
    # Older attribute spellings the broker-filter still reads.
    (
        [{"exact": {"schemaurl": "https://x/s.json"}}],
        {**UPLOADED, "dataschema": "https://x/s.json"},
        True,
    ),
    (
        [{"exact": {"datamediatype": "application/json"}}],
        {**UPLOADED, "datacontenttype": "application/json; charset=utf-8"},
        True,
    ),
    # Entries with an empty key or value are dropped: they let everything through.
    ([{"exact": {"type": ""}}], UPLOADED, True),
    ([{"exact": {"type": ""}}, {"exact": {"source": "/other"}}], UPLOADED, False),
    ([{"prefix": {"": "x"}}], UPLOADED, True),
    ([{"not": {"exact": {"type": ""}}}], UPLOADED, True),
]


@pytest.mark.parametrize("filters, event, passes", FILTERS_CASES)
def test_filters(filters, event, passes):
    matches, _ = trigger_filter(None, filters)
    assert matches(event) is passes


def test_filters_when_present_replace_filter_attributes():
    matches, _ = trigger_filter(
        {"attributes": {"type": "dev.imagerec.image.accepted"}},
        [{"prefix": {"type": "dev.imagerec.image.up"}}],
    )
    assert matches(UPLOADED)
    assert not matches({**UPLOADED, "type": "dev.imagerec.image.accepted"})


def test_yaml_scalars_compare_as_their_string_form():
    matches, _ = trigger_filter({"attributes": {"attempt": 3, "final": True}}, None)
    assert matches({**UPLOADED, "attempt": "3", "final": "true"})


REFUSED = {
    "two dialects in one entry": [{"exact": {"type": "a"}, "suffix": {"source": "b"}}],
    "cesql": [{"cesql": "type = 'a'"}],
    "unknown dialect": [{"regex": {"type": ".*"}}],
    "no dialect": [{}],
    "exact not a mapping": [{"exact": "type=a"}],
    "any not a list": [{"any": {"exact": {"type": "a"}}}],
}


@pytest.mark.parametrize("filters", REFUSED.values(), ids=REFUSED.keys())
def test_filters_knative_or_the_runner_refuses_fail_to_load(tmp_path, filters):
    manifests = [broker(), trigger("t", ref("s"), filters=filters)]
    with (
        pytest.raises(ManifestError, match="Trigger imagerec/t"),
        running(tmp_path, manifests, {"s": "http://127.0.0.1:9"}),
    ):
        pass


def test_a_bad_attribute_name_in_filter_attributes_fails_to_load():
    with pytest.raises(ValueError, match="attribute name"):
        trigger_filter({"attributes": {"image-id": "x"}}, None)


def test_every_matching_trigger_gets_the_event_and_no_other(tmp_path):
    manifests = [
        broker(),
        trigger("exact", ref("exact"), {"type": "dev.imagerec.image.uploaded"}),
        trigger("prefix", ref("prefix"), filters=[{"prefix": {"type": "dev.imagerec."}}]),
        trigger("other", ref("other"), {"type": "dev.imagerec.image.accepted"}),
    ]
    with Subscriber() as exact, Subscriber() as prefix, Subscriber() as other:
        services = {"exact": exact.url, "prefix": prefix.url, "other": other.url}
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            post_event(server.broker_url, "dev.imagerec.image.uploaded")
            runner.wait_idle()
    assert exact.types() == prefix.types() == ["dev.imagerec.image.uploaded"]
    assert other.types() == []


ROUTING = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: imagerec}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: on-something, namespace: imagerec}
spec:
  broker: default
  filter:
    attributes:
      type: dev.imagerec.image.uploaded
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: step}
"""


def test_changing_a_filter_in_the_manifest_folder_changes_what_is_delivered(tmp_path):
    events = ["dev.imagerec.image.uploaded", "dev.imagerec.image.rejected"]
    delivered = []
    for routing in (ROUTING, ROUTING.replace("image.uploaded", "image.rejected")):
        with Subscriber() as step, running(tmp_path, routing, {"step": step.url}) as (r, srv):
            for event_type in events:
                post_event(srv.broker_url, event_type)
            r.wait_idle()
        delivered.append(step.types())
    assert delivered == [["dev.imagerec.image.uploaded"], ["dev.imagerec.image.rejected"]]


def test_many_events_at_once_each_reach_every_matching_trigger(tmp_path):
    manifests = [
        broker(),
        trigger("exact", ref("exact"), {"type": "dev.imagerec.image.uploaded"}),
        trigger("prefix", ref("prefix"), filters=[{"prefix": {"type": "dev.imagerec."}}]),
    ]
    subjects = [f"img-{i}" for i in range(40)]
    with Subscriber() as exact, Subscriber() as prefix:
        services = {"exact": exact.url, "prefix": prefix.url}
        with running(tmp_path, manifests, services, FakeClock()) as (runner, server):
            with ThreadPoolExecutor(8) as producers:
                answers = list(
                    producers.map(
                        lambda subject: (
                            post_event(
                                server.broker_url, "dev.imagerec.image.uploaded", subject=subject
                            ).status_code
                        ),
                        subjects,
                    )
                )
            runner.wait_idle()
    assert answers == [202] * len(subjects)
    for subscriber in (exact, prefix):
        assert sorted(r.attributes["subject"] for r in subscriber.received()) == sorted(subjects)
