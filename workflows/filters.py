"""Trigger filters, evaluated as Knative's broker-filter does (docs/knative.md §3).

An event is seen as its attributes, all strings (it crossed the channel in binary mode). Two
forms exist on a Trigger:

- `filters` (the subscriptions API): a list whose entries must ALL pass; each entry holds exactly
  one dialect: `exact`, `prefix`, `suffix` (maps of attribute -> value), `all`, `any` (lists of
  entries), `not` (one entry). An entry with an empty key or value is dropped at runtime, i.e. it
  lets everything through. `cesql` is refused when loading: the local runner has no CloudEvents
  SQL engine, and silently passing or blocking everything would route differently from Knative.
- `filter.attributes`, used only when `filters` is empty: every key must equal its value exactly;
  the value `""` means "present and non-empty".

Lookup quirks kept on purpose: a missing `subject`, `dataschema` or `datacontenttype` reads as
`""` (not missing), a missing `time` as `0001-01-01T00:00:00Z`; a missing extension is missing,
and fails any test on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

Attributes = Mapping[str, str]
Predicate = Callable[[Attributes], bool]

_READ_AS_EMPTY = ("subject", "dataschema", "datacontenttype", "datacontentencoding")
_ALIASES = {"schemaurl": "dataschema"}
_ZERO_TIME = "0001-01-01T00:00:00Z"
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9]*$")
DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")


def lookup(attributes: Attributes, name: str) -> str | None:
    """An attribute's value as the broker-filter reads it; None when it is missing."""
    if name in _ALIASES:  # older spellings the broker-filter still answers to
        name = _ALIASES[name]
    if name == "datamediatype":
        return (attributes.get("datacontenttype") or "").split(";", 1)[0].strip()
    if name in attributes:
        return attributes[name]
    if name in _READ_AS_EMPTY:
        return ""
    if name == "time":
        return _ZERO_TIME
    return None


def text(value: Any) -> str:
    """A YAML or JSON scalar as the string Knative compares (Go's formatting of it)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def trigger_filter(filter_spec: Any, filters_spec: Any) -> tuple[Predicate, str]:
    """The predicate of a Trigger's `filter`/`filters`, and a one-line description of it."""
    if filters_spec:
        if not isinstance(filters_spec, list):
            raise ValueError("spec.filters must be a list")
        entries = [_entry(entry, f"spec.filters[{i}]") for i, entry in enumerate(filters_spec)]
        predicate = _all(entries)
        description = json.dumps(filters_spec, separators=(",", ":"))
        return predicate or _everything, description
    attributes = (filter_spec or {}).get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("spec.filter.attributes must be a mapping")
    for name in attributes:
        if not _ATTRIBUTE_NAME.match(str(name)):
            raise ValueError(f"spec.filter.attributes: invalid attribute name {name!r}")
    wanted = {str(name): text(value) for name, value in attributes.items()}
    if not wanted:
        return _everything, "everything"
    description = " ".join(f"{name}={value or '*'}" for name, value in wanted.items())
    return _attributes_filter(wanted), description


def _everything(attributes: Attributes) -> bool:
    return True


def _attributes_filter(wanted: dict[str, str]) -> Predicate:
    def matches(attributes: Attributes) -> bool:
        for name, value in wanted.items():
            actual = lookup(attributes, name)
            if actual is None or (value == "" and actual == ""):
                return False
            if value != "" and actual != value:
                return False
        return True

    return matches


def _entry(entry: Any, where: str) -> Predicate | None:
    """One `filters` entry; None when Knative would drop it (it then filters nothing)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping with one dialect")
    dialects = [key for key in entry if key in DIALECTS]
    unknown = [key for key in entry if key not in DIALECTS]
    if unknown:
        raise ValueError(f"{where}: unknown filter dialect(s) {unknown}")
    if not dialects:
        raise ValueError(f"{where}: no filter dialect (one of {', '.join(DIALECTS)})")
    if len(dialects) > 1:
        raise ValueError(f"{where}: multiple dialects found {dialects}")
    dialect = dialects[0]
    body = entry[dialect]
    if dialect == "cesql":
        raise ValueError(
            f"{where}: cesql filters are not supported by the local runner; "
            "use exact, prefix, suffix, all, any or not"
        )
    if dialect in ("exact", "prefix", "suffix"):
        if not isinstance(body, dict):
            raise ValueError(f"{where}.{dialect} must be a mapping of attribute to value")
        return _compare(dialect, {str(k): text(v) for k, v in body.items()})
    if dialect == "not":
        inner = _entry(body, f"{where}.not")
        return None if inner is None else (lambda attributes: not inner(attributes))
    if not isinstance(body, list):
        raise ValueError(f"{where}.{dialect} must be a list of filters")
    children = [_entry(child, f"{where}.{dialect}[{i}]") for i, child in enumerate(body)]
    return _all(children) if dialect == "all" else _any(children)


def _compare(dialect: str, pairs: dict[str, str]) -> Predicate | None:
    if not pairs or any(not name or not value for name, value in pairs.items()):
        return None
    test = {
        "exact": str.__eq__,
        "prefix": str.startswith,
        "suffix": str.endswith,
    }[dialect]

    def matches(attributes: Attributes) -> bool:
        for name, value in pairs.items():
            actual = lookup(attributes, name)
            if actual is None or not test(actual, value):
                return False
        return True

    return matches


def _all(children: list[Predicate | None]) -> Predicate | None:
    kept = [child for child in children if child is not None]
    if not kept:
        return None
    return lambda attributes: all(child(attributes) for child in kept)


def _any(children: list[Predicate | None]) -> Predicate | None:
    kept = [child for child in children if child is not None]
    if not kept:
        return None
    return lambda attributes: any(child(attributes) for child in kept)
