"""Figures as the benchmark reports them: a value, its baseline, its target, met or not."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_COMPARE = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass
class Figure:
    """One measured figure; `target` is e.g. ("<=", 1.25), or None for information only."""

    key: str
    value: float | None
    unit: str
    what: str
    target: tuple[str, float] | None = None
    baseline: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None:
            return False
        op, bound = self.target
        return bool(_COMPARE[op](self.value, bound))

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["target"] = f"{self.target[0]} {self.target[1]:g}" if self.target else None
        body["met"] = self.met
        return body


class Report:
    """The figures of one run, in the order they were measured."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.notes: list[str] = []

    def add(self, figure: Figure) -> Figure:
        self.figures[figure.key] = figure
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self) -> str:
        rows = [("figure", "value", "target", "met", "baseline / what")]
        for f in self.figures.values():
            value = "n/a" if f.value is None else f"{f.value:.3g} {f.unit}".strip()
            target = f"{f.target[0]} {f.target[1]:g}" if f.target else ""
            met = {None: "", True: "met", False: "NOT MET"}[f.met]
            rows.append((f.key, value, target, met, f.baseline or f.what))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
            for row in rows
        ]
        lines.insert(1, "-" * min(150, len(lines[0]) + 20))
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def write_json(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "meta": meta,
            "figures": {k: f.as_json() for k, f in self.figures.items()},
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
