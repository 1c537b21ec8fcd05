"""The public imports users have keep working after the package layout of issue 23:
every `lrresearch` name the README, the docs and the examples import or name resolves
(read from those files, so a doc that names a moved path fails here), the names the
migration note promises, and every module path of the flat layout (`moved.MOVED`)
still imports, as the module it became, with a `DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from typing import Any

import pytest

from lrresearch import moved
from tests.support import REPO

# Always public (docs/changes.md, issue 23): besides what the docs name.
PROMISED = (
    "lrresearch.Trainer",
    "lrresearch.keras_fit.ControlledModel",
    "lrresearch.keras_fit.PerBatchSummaries",
    "lrresearch.keras_fit.lr_find",
)
IMPORT_FROM = re.compile(r"^\s*from\s+(lrresearch[\w.]*)\s+import\s+(\([^)]*\)|[^#\n]+)", re.M)
IMPORT = re.compile(r"^\s*import\s+(lrresearch[\w.]*)", re.M)
DOTTED = re.compile(r"`(lrresearch(?:\.\w+)+)")  # `lrresearch.a.b` named in a text
ALIAS = re.compile(r"^\s*import\s+lrresearch\s+as\s+(\w+)", re.M)


def documents() -> list:
    return [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *sorted((REPO / "docs").rglob("*.md")),
        *sorted((REPO / "examples").rglob("*.py")),
    ]


def names_in(text: str) -> set[str]:
    """Every `lrresearch...` name a text imports, names in backticks or uses through
    `import lrresearch as lr` (`lr.LossTrendController`)."""
    found = set(IMPORT.findall(text)) | set(DOTTED.findall(text))
    for module, imported in IMPORT_FROM.findall(text):
        for name in re.findall(r"(\w+)(?:\s+as\s+\w+)?", imported.strip("()")):
            if name != "as":
                found.add(f"{module}.{name}")
    for alias in ALIAS.findall(text):
        # Not after a "-" or "/": `follows-lr.md` in a link is a file, not `lr.md`.
        used = re.findall(rf"(?<![-/\w]){alias}\.(\w+)", text)
        found |= {f"lrresearch.{name}" for name in used}
    return found


def resolve(path: str) -> Any:
    """The object a dotted name stands for: the longest importable module, then
    attributes. Raises ImportError or AttributeError."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(path)


def test_the_docs_name_public_imports():
    """The grep finds what it should (a guard on the regexes themselves)."""
    named = set().union(*(names_in(p.read_text()) for p in documents()))
    assert {"lrresearch.keras_fit.ControlledModel", "lrresearch.LossTrendController"} <= named


def test_every_lrresearch_name_the_docs_import_resolves_at_its_new_path():
    # The migration note names the old module paths; what it imports must resolve.
    old_paths = {f"lrresearch.{old}" for old in moved.MOVED}
    broken = []
    for path in documents():
        names = names_in(path.read_text())
        if path == REPO / "docs/changes.md":
            names -= old_paths
        for name in sorted(names):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    resolve(name)
                except (ImportError, AttributeError) as e:
                    broken.append(f"{path.relative_to(REPO)}: {name} ({type(e).__name__}: {e})")
                    continue
            old = [str(w.message) for w in caught if "moved to" in str(w.message)]
            broken += [f"{path.relative_to(REPO)}: {name}: {m}" for m in old]
    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize("name", PROMISED)
def test_promised_public_name_resolves(name):
    assert callable(resolve(name))


@pytest.mark.parametrize(
    "package", ["lrresearch", "lrresearch.controllers", "lrresearch.optimizers"]
)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_old_module_path_imports_the_new_module_with_a_deprecation_warning(old):
    old_name, new_name = f"lrresearch.{old}", f"lrresearch.{moved.MOVED[old]}"
    new = importlib.import_module(new_name)
    saved = sys.modules.pop(old_name, None)  # imported earlier in this process: warn again
    try:
        with pytest.warns(DeprecationWarning, match=re.escape(new_name)):
            module = importlib.import_module(old_name)
    finally:
        sys.modules.pop(old_name, None)
        if saved is not None:
            sys.modules[old_name] = saved
    if old not in moved.MOVED_NAMES:
        assert module is new
        return
    # An old module that re-exported other modules' names: its own names are the new
    # module's objects, the re-exported ones come from their homes with a warning.
    own = [name for name in vars(new) if not name.startswith("_")]
    assert own and all(getattr(module, name) is getattr(new, name) for name in own)
    for name, home in moved.MOVED_NAMES[old].items():
        with pytest.warns(DeprecationWarning, match=re.escape(f"lrresearch.{home}")):
            value = getattr(module, name)
        assert value is getattr(importlib.import_module(f"lrresearch.{home}"), name)
