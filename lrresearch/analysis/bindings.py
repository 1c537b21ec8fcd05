"""A finished run's configuration, read back from its `config.gin` without building
anything: `{binding: value source}`, the method its sweep or study names it by, and its
batch size.

The file is read with gin's own parser (`gin.config_parser.ConfigParser`), so scoped
names (`train/Trainer.steps`), values over several lines, `@references`, `%macros` and
binding blocks read as gin reads them; nothing is looked up in gin's registry (the run's
classes need not be importable here). Each value is kept as canonical source: the parsed
value's `repr`, with references written `@Name()` / `@Name` and macros `%NAME`, so two
runs bind the same value exactly when their sources are equal, however the file wraps or
spaces them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tokenize
from typing import Any

from gin import config_parser

from lrresearch.logs.run_layout import CONFIG_FILE

# The binding that tells a run's seeds apart: runs that differ only in it are one group.
SEED_BINDING = "Trainer.seed"
# Where a run's batch size is: the operative config records it, the Trainer's default
# included, for every run the Trainer trained (older layouts too).
BATCH_SIZE_BINDING = "Trainer.batch_size"
# The files a sweep or a study writes in its folder, which may name each run's method.
MANIFESTS = ("sweep.json", "study.json")


class _Reference:
    def __init__(self, name: str, evaluate: bool):
        self.source = f"@{name}()" if evaluate else f"@{name}"

    def __repr__(self) -> str:
        return self.source


class _Macro:
    def __init__(self, name: str):
        self.source = f"%{name}"

    def __repr__(self) -> str:
        return self.source


class _Delegate(config_parser.ParserDelegate):
    """References and macros kept as their source, never resolved."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> Any:
        return _Reference(scoped_configurable_name, evaluate)

    def macro(self, macro_name: str) -> Any:
        return _Macro(macro_name)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run's bindings, or why there are none.

    Attributes:
      run: the run directory.
      bindings: `{'scope/Configurable.param': canonical value source}` (a macro is bound
        under its own name), or None when `problem` says why not.
      problem: empty, or "no config.gin" / "config.gin does not parse: ...".
    """

    run: str
    bindings: dict[str, str] | None
    problem: str = ""


def parse_bindings(text: str, filename: str = CONFIG_FILE) -> dict[str, str]:
    """`{binding: canonical source}` of gin text; raises SyntaxError, ValueError or
    tokenize.TokenError (a file cut inside a value)."""
    out: dict[str, str] = {}
    for statement in config_parser.ConfigParser(text, _Delegate()):
        if isinstance(statement, config_parser.BindingStatement):
            name = f"{statement.selector}.{statement.arg_name}" if statement.arg_name else ""
            name = name or statement.selector  # a macro: `LR = 0.1`
            key = f"{statement.scope}/{name}" if statement.scope else name
            out[key] = repr(statement.value)
    return out


def read_config(run: str) -> RunConfig:
    """The run's bindings from `<run>/config.gin`."""
    path = os.path.join(run, CONFIG_FILE)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return RunConfig(run, None, f"no {CONFIG_FILE}")
    try:
        return RunConfig(run, parse_bindings(text, path))
    except (SyntaxError, ValueError, tokenize.TokenError) as e:  # a cut or edited file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RunConfig(run, None, f"{CONFIG_FILE} does not parse: {first}")


def unscoped(binding: str) -> str:
    """`'train/Trainer.seed'` -> `'Trainer.seed'`."""
    return binding.rsplit("/", 1)[-1]


def is_seed(binding: str) -> bool:
    """The seed binding, under any scope."""
    return unscoped(binding) == SEED_BINDING


def short_value(source: str) -> str:
    """A value source as a label shows it: `@GradNormController()` -> `GradNormController`,
    `'relu'` -> `relu`, a float drawn by a study `0.044303752452182654` -> `0.0443` (4
    significant digits; the group itself is keyed by the full value)."""
    value = re.sub(r"^@|\(\)$", "", source.strip())
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", value) and not value.isdigit():
        return f"{float(value):.4g}"
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def batch_size(config: RunConfig) -> int | None:
    """The run's global batch size (examples per step), or None if its config.gin does
    not bind `Trainer.batch_size` (a Keras `fit` run, or no config.gin)."""
    source = (config.bindings or {}).get(BATCH_SIZE_BINDING)
    try:
        return int(source) if source is not None else None
    except ValueError:  # a macro or a reference: not a number we can read
        return None


def method_of(run: str) -> str | None:
    """The method name the run's parent `sweep.json` or `study.json` records for it (key
    "method" on the entry whose "run" is the run's folder name), or None."""
    parent, name = os.path.split(os.path.normpath(os.path.abspath(run)))
    for manifest in MANIFESTS:
        try:
            with open(os.path.join(parent, manifest)) as f:
                content = json.load(f)
        except (OSError, ValueError):
            continue
        entries = [
            entry
            for value in (content.values() if isinstance(content, dict) else ())
            if isinstance(value, list)
            for entry in value
            if isinstance(entry, dict)
        ]
        for entry in entries:
            if entry.get("run") == name and isinstance(entry.get("method"), str):
                return entry["method"]
    return None
