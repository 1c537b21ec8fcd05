"""Docstrings and signatures read for people: the summary, a section, the `Args:`
entries, a configurable's defaults as a gin file writes them. Shared by the generated
reference pages (`docgen`) and `lrresearch list` (`listing`)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any


def section_of(docstring: str, title: str) -> str:
    """The body of a Google-style docstring section (`Args:`, `References:`, ...),
    dedented and with its lines joined per paragraph."""
    text = inspect.cleandoc(docstring or "")
    match = re.search(rf"^{title}:\n((?:[ \t]+.*\n?|\n)+)", text, re.MULTILINE)
    return inspect.cleandoc(match.group(1)) if match else ""


def summary_of(docstring: str) -> str:
    """The docstring up to its first section or blank line after the first paragraph
    (the one-line summary and the rule), lines joined."""
    text = inspect.cleandoc(docstring or "")
    head = re.split(r"\n\n|\n(?=\w[\w ]*:\n)", text, maxsplit=1)[0]
    return " ".join(line.strip() for line in head.splitlines())


def args_of(docstring: str) -> dict[str, str]:
    """`{argument: description}` from an `Args:` section."""
    args: dict[str, str] = {}
    current = None
    for line in section_of(docstring, "Args").splitlines():
        if m := re.match(r"^(\*{0,2}\w+)(?: \([^)]*\))?: (.*)", line):
            current = m.group(1).lstrip("*")
            args[current] = m.group(2).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return args


def defaults(obj: Callable[..., Any]) -> dict[str, str]:
    """`{argument: repr(default)}` of a class's constructor or a function."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    out = {}
    for name, parameter in inspect.signature(target).parameters.items():
        # A `name=None` is an object's own (tf.Module, Keras); `tabular.name` is data.
        own_name = name == "name" and parameter.default is None
        if name == "self" or own_name or parameter.kind in (parameter.VAR_POSITIONAL,
                                                            parameter.VAR_KEYWORD):  # fmt: skip
            continue
        default = parameter.default
        out[name] = "required" if default is inspect.Parameter.empty else gin_value(default)
    return out


def gin_value(default: Any) -> str:
    import gin

    if default is gin.REQUIRED:
        return "required"
    if callable(default) and hasattr(default, "__name__"):
        return f"@{default.__name__}"
    return repr(default)


def first_sentence(docstring: str | None) -> str:
    summary = summary_of(docstring or "")
    match = re.match(r"(.+?\.)(\s|$)", summary)
    return match.group(1) if match else summary
