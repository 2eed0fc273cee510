"""Citations in the repository point at documents a clone has.

Comments and docs cite docs/knative.md and docs/toolchain.md by section (`docs/knative.md §4`);
every such section must exist, and nothing may cite notes that live outside the repository.
"""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

DOCS = {"knative.md", "toolchain.md"}


def tracked_text_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        name
        for name in listed
        if name.endswith((".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".js", ".html"))
        and not name.startswith("tests/schemas/")
        and name != "tests/test_docs.py"  # names the forbidden citations to find them
    ]


def sections(doc: str) -> set[str]:
    text = (ROOT / "docs" / doc).read_text()
    return set(re.findall(r"^## (\d+)\.", text, re.M))


def test_nothing_cites_notes_outside_the_repository() -> None:
    outside = re.compile(r"semantics §|toolchain-notes|shared/docs|knative-eventing-semantics")
    offenders = [
        f"{name}:{number}"
        for name in tracked_text_files()
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not offenders, offenders


def test_every_cited_section_exists() -> None:
    cited = re.compile(r"docs/(knative|toolchain)\.md\s*(?:#\s*)?\(?§(\d+)")
    known = {doc: sections(doc) for doc in DOCS}
    assert len(known["knative.md"]) >= 16 and known["toolchain.md"] >= {"1", "2", "3"}
    citations = 0
    for name in tracked_text_files():
        for doc, section in cited.findall((ROOT / name).read_text()):
            citations += 1
            assert section in known[f"{doc}.md"], f"{name} cites docs/{doc}.md §{section}"
    assert citations >= 20
