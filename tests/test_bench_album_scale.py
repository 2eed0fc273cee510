"""benchmarks/album_scale.py in its smoke size: every figure is there, the album's 304 poll
really is a 304, and the albums list really is one query (its figures' speeds mean nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.album_scale import album_scale_figures  # noqa: E402


def test_album_scale_figures_in_smoke_size() -> None:
    figures = {f.key: f for f in album_scale_figures(smoke=True)}
    assert set(figures) == {
        "album.first_page.seconds",
        "album.first_page.vs_floor",
        "album.deep_page.vs_first_page",
        "album.html_first_screen.seconds",
        "album.first_page.kilobytes",
        "album.html.kilobytes",
        "album.poll_304.vs_album_floor",
        "album.poll_304.vs_small_album",
        "album.poll_changes.vs_album_floor",
        "album.poll_304.vs_first_page",
        "albums_list.queries",
    }
    assert all(isinstance(f.value, int | float) for f in figures.values())
    assert figures["albums_list.queries"].value == 1 and figures["albums_list.queries"].met
    assert figures["album.poll_304.vs_album_floor"].detail["sql_statements"] == 2
    # 100 photos a page, whatever the album's size.
    assert 50 < figures["album.first_page.kilobytes"].value < 250
