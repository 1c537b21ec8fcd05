"""The docs: generated reference pages match the code; every relative link in the
README and docs/ points at a file that exists."""

from __future__ import annotations

import re

import pytest

from lrresearch.cli import docgen
from tests.support import REPO


@pytest.mark.parametrize("page", sorted(docgen.pages()))
def test_generated_page_matches_the_code(page):
    on_disk = (REPO / page).read_text() if (REPO / page).exists() else None
    assert on_disk == docgen.pages()[page], (
        f"{page} is out of date with the code: run `python tools/write_docs.py`"
    )


def test_every_tag_written_in_the_code_is_in_the_tag_reference():
    text = (REPO / "docs/reference/tags.md").read_text()
    sources = "\n".join(p.read_text() for p in (REPO / "lrresearch").rglob("*.py"))
    written = set(re.findall(r'summaries\.scalar\(\s*f?"([a-z_/]+)', sources))
    written |= set(re.findall(r'^\s*"((?:guard|loss|grad|eval)/[a-z_]+)":', sources, re.M))
    for tag in written:
        family = tag.rsplit("/", 1)[0] + "/<"
        assert f"`{tag}`" in text or family in text, tag


def markdown_files():
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
