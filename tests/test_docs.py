"""The docs: generated reference pages match the code; `base.gin` binds every
default the bindings reference lists; every relative link in the README and docs/
points at a file that exists; no text file of the repository keeps a merge's conflict
markers; docs/results.md has a row for every shipped strategy file."""

from __future__ import annotations

import pathlib
import re

import gin
import pytest

from lrresearch.cli import docgen
from lrresearch.cli.docstrings import gin_value
from lrresearch.config import parse as config
from lrresearch.training.arguments import DEFAULT_CONTROLLER
from tests.support import GIN_DIR, REPO

# The one place this file finds the base configuration.
BASE_GIN = GIN_DIR / "base.gin"


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


def base_gin_bindings() -> dict[str, str]:
    """`{binding: value as gin writes it}` of base.gin's `Trainer.*` and
    `distribution.*` lines, parsed by gin itself."""
    names = re.findall(r"^((?:Trainer|distribution)\.\w+)\s*=", BASE_GIN.read_text(), re.M)
    gin.clear_config()
    try:
        config.parse([str(BASE_GIN)], [])
        return {name: gin_value(gin.query_parameter(name)) for name in names}
    finally:
        gin.clear_config()


def test_base_gin_binds_every_trainer_and_distribution_default():
    """The bindings reference says base.gin binds each of its rows to the row's
    default: the same defaults (`docgen.trainer_bindings`, read from the signatures)."""
    expected = {name: default for name, (default, _) in docgen.trainer_bindings().items()}
    # `Trainer.controller = None` means the default controller; base.gin names it.
    expected["Trainer.controller"] = f"@{DEFAULT_CONTROLLER.__name__}()"
    bound = base_gin_bindings()
    assert sorted(set(expected) - set(bound)) == [], "unbound in base.gin"
    assert sorted(set(bound) - set(expected)) == [], "bound in base.gin, not a default"
    differ = {
        name: (bound[name], expected[name]) for name in expected if bound[name] != expected[name]
    }
    assert differ == {}, "base.gin value, signature default"


def test_every_base_gin_binding_has_a_comment():
    """Each default in base.gin says its unit or its choices, where users read it."""
    for line in BASE_GIN.read_text().splitlines():
        if re.match(r"(Trainer|distribution)\.\w+\s*=", line):
            assert "#" in line, f"base.gin: no comment on {line!r}"


def test_controllers_guide_names_every_controller_without_a_strategy_file():
    """The guide's claim: every exported controller has a shipped `strategies/` file that
    trains with it, except the ones it names in that sentence."""
    from lrresearch import controllers

    files = docgen._strategy_files()
    without = {
        n
        for n in controllers.__all__
        if n not in files and n not in ("Controller", "ControllerOutput")
    }
    guide = (REPO / "docs/guide/controllers.md").read_text()
    claim = guide[guide.index("Each controller but") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", claim))
    assert without <= named, f"no strategies/ file, not named in the guide: {without - named}"


def markdown_files():
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


CONFLICT = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)", re.MULTILINE)
TEXT = {".md", ".py", ".gin", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".json", ".csv", ""}


def test_no_file_keeps_a_merges_conflict_markers():
    """A merge resolved by hand left `<<<<<<< HEAD` in the README once; CI caught none."""
    roots = ["README.md", "CONTRIBUTING.md", "pyproject.toml", ".ci", "docs", "lrresearch",
             "tests", "tools", "examples"]  # fmt: skip
    found = []
    for root in roots:
        path = REPO / root
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix not in TEXT or "__pycache__" in f.parts or f == pathlib.Path(__file__):
                continue
            text = f.read_text(errors="replace")
            found += [f"{f.relative_to(REPO)}: {m.group(0)!r}" for m in CONFLICT.finditer(text)]
    assert not found, "conflict markers left by a merge:\n" + "\n".join(found)


def test_the_results_page_has_every_shipped_strategy():
    """docs/results.md says it runs every `strategies/*.gin`: re-run
    `python tools/results_table.py` when a strategy file is added."""
    page = (REPO / "docs/results.md").read_text()
    missing = [
        f.stem for f in sorted((GIN_DIR / "strategies").glob("*.gin"))
        if f"| {f.stem} |" not in page
    ]  # fmt: skip
    assert not missing, f"docs/results.md has no row for {missing}: run tools/results_table.py"
