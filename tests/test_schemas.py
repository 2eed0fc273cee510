"""The event schemas against the database: every string and number an event carries is bounded
by what the column it is stored in holds, so no schema-valid event can fail on PostgreSQL."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from sqlalchemy import BigInteger, Float, Integer, String, Text
from sqlalchemy.orm import InstrumentedAttribute
from test_store_results import dump, labelled, store

from imagerec.events import IMAGE_EVENT_TYPES
from imagerec.models import Detection, Image

pytest_plugins = ["test_store_results"]  # its `client` and `upload` fixtures

# Where each event field ends up. A new field must be added here (or to NOT_STORED).
STORED_IN: dict[str, InstrumentedAttribute] = {
    "imageId": Image.id,
    "userId": Image.user_id,
    "albumId": Image.album_id,
    "blobKey": Image.blob_key,
    "fileName": Image.file_name,
    "contentType": Image.content_type,
    "size": Image.size,
    "reason": Image.reason,
    "thumbnailKey": Image.thumbnail_key,
    "model": Image.model,
    "metadata/creationTime": Image.creation_time,
    "metadata/exifMake": Image.exif_make,
    "metadata/exifModel": Image.exif_model,
    "metadata/dimensions/width": Image.width,
    "metadata/dimensions/height": Image.height,
    "metadata/orientation": Image.orientation,
    "metadata/fileSize": Image.file_size,
    "metadata/format": Image.format,
    "metadata/contentHash": Image.content_hash,
    "metadata/geo/latitude/D": Image.lat_degrees,
    "metadata/geo/latitude/M": Image.lat_minutes,
    "metadata/geo/latitude/S": Image.lat_seconds,
    "metadata/geo/latitude/Direction": Image.lat_direction,
    "metadata/geo/longitude/D": Image.lon_degrees,
    "metadata/geo/longitude/M": Image.lon_minutes,
    "metadata/geo/longitude/S": Image.lon_seconds,
    "metadata/geo/longitude/Direction": Image.lon_direction,
    "metadata/geo/lat": Image.latitude,
    "metadata/geo/lon": Image.longitude,
    "detections/*/label": Detection.label,
    "detections/*/score": Detection.score,
    "detections/*/box/*": Detection.box_ymin,
    "status": Image.status,
}
# Carried but not stored as such (labels are recomputed from the detections): still bounded
# like the column their values come from.
NOT_STORED = {"labels/*/label": Detection.label, "labels/*/score": Detection.score}
INTEGER_RANGE = {Integer: (-(2**31), 2**31 - 1), BigInteger: (-(2**63), 2**63 - 1)}


def schema(event_type: str) -> dict[str, Any]:
    text = resources.files("imagerec.schemas").joinpath(f"{event_type}.json").read_text()
    return json.loads(text)


def leaves(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every value that is not an object or array, `oneOf` flattened."""
    for branch in node.get("oneOf", []):
        yield from leaves(branch, path)
    for name, child in node.get("properties", {}).items():
        yield from leaves(child, f"{path}/{name}".lstrip("/"))
    if "items" in node:
        yield from leaves(node["items"], f"{path}/*")
    if not {"oneOf", "properties", "items"} & set(node) and node.get("type") != "null":
        yield path, node


def types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def column_type(column: InstrumentedAttribute):
    return column.property.columns[0].type


ALL_LEAVES = [
    (event_type, path, node)
    for event_type in IMAGE_EVENT_TYPES
    for path, node in leaves(schema(event_type))
]


@pytest.mark.parametrize(
    "event_type, path, node",
    ALL_LEAVES,
    ids=[f"{t.rsplit('.', 1)[1]}:{p}" for t, p, _ in ALL_LEAVES],
)
def test_every_event_field_fits_its_column(event_type, path, node):
    column = STORED_IN.get(path) or NOT_STORED.get(path)
    assert column is not None, f"{path} of {event_type}: say which column holds it (STORED_IN)"
    kind = column_type(column)
    if "enum" in node:
        assert all(len(str(v)) <= kind.length for v in node["enum"] if v is not None)
        return
    if "string" in types(node):
        assert isinstance(kind, String)
        limit = node.get("maxLength")
        assert limit is not None, f"{path} has no maxLength"
        if not isinstance(kind, Text) and kind.length is not None:
            assert limit <= kind.length, f"{path}: maxLength {limit} > {column} {kind.length}"
        # PostgreSQL text cannot hold NUL; the pattern must refuse it.
        assert "pattern" in node and not re.search(node["pattern"], "a\x00"), path
    if "integer" in types(node):
        low, high = INTEGER_RANGE.get(type(kind), (None, None))
        if isinstance(kind, Float):
            low, high = -(2**53), 2**53
        assert low is not None, f"{path} is an integer but {column} is {kind}"
        assert low <= node["minimum"] and node["maximum"] <= high, path
    if "number" in types(node):
        assert isinstance(kind, Float)
        assert "minimum" in node and ("maximum" in node or "exclusiveMaximum" in node), path


def test_the_map_names_no_field_the_schemas_lost():
    paths = {path for _, path, _ in ALL_LEAVES}
    assert set(STORED_IN) | set(NOT_STORED) <= paths


def _labelled_at(uploaded: dict[str, Any], change) -> dict[str, Any]:
    data = copy.deepcopy(labelled(uploaded))
    change(data)
    return data


EDGES = {
    "creationTime": lambda d, n: d["metadata"].__setitem__(
        "creationTime", "2024-01-01T" + "1" * (n - 11)
    ),
    "label": lambda d, n: d["detections"][0].__setitem__("label", "L" * n),
    "model": lambda d, n: d.__setitem__("model", "m" * n),
    "exifMake": lambda d, n: d["metadata"].__setitem__("exifMake", "M" * n),
    "width": lambda d, n: d["metadata"]["dimensions"].__setitem__("width", n),
}
LIMITS = {"creationTime": 32, "label": 128, "model": 512, "exifMake": 255, "width": 2**31 - 1}


@pytest.mark.parametrize("field", list(EDGES))
def test_values_at_the_limit_are_stored_and_one_over_is_a_400(client, configured, upload, field):
    """Over the limit was a 500 on PostgreSQL (retried, then dead-lettered)."""
    over = _labelled_at(upload, lambda d: EDGES[field](d, LIMITS[field] + 1))
    response = store(client, over)
    assert response.status_code == 400, response.get_data(as_text=True)

    at = _labelled_at(upload, lambda d: EDGES[field](d, LIMITS[field]))
    response = store(client, at)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert dump(configured, upload["imageId"])["status"] == "done"
