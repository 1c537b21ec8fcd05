"""The messages of configuration errors: what gin could not parse, a required binding
left unset, and where a binding a constructor rejected was made (`file:line` or
`--gin_param`). `lrresearch.config.parse` raises them; it re-exports these names."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lrresearch.config import arguments as unknown_arguments

# What every value-parse hint says: gin values are Python literals or references.
VALUE_HINT = (
    "  A value is a Python literal (20, 0.5, 'text', (64, 64), None) or a reference: "
    "@Name, or @Name() for what it returns; strings need quotes."
)


def explain_syntax(error: SyntaxError, where: str) -> str:
    """`file:line: what gin could not parse` plus how values and bindings are written."""
    if not where:
        where = f"{error.filename}:{error.lineno}" if error.filename else f"line {error.lineno}"
    text = (error.text or "").strip()
    shown = f" in: {text}" if text and not where.startswith("--gin_param") else ""
    if m := re.search(r"Failed to parse token '(.*)'", error.msg or ""):
        token = m.group(1)
        hint = VALUE_HINT
        if re.fullmatch(r"[A-Za-z_][\w.]*", token):
            hint = f"  Quote a string ('{token}'); reference a configurable with @{token}()."
        return f"{where}: gin cannot parse the value `{token}`{shown}\n{hint}"
    if "Unable to parse value" in (error.msg or ""):
        return f"{where}: gin cannot parse the value{shown}\n{VALUE_HINT}"
    if "expected ':' or '='" in (error.msg or ""):
        return (
            f"{where}: not a binding{shown}\n"
            "  A binding looks like 'Configurable.parameter = value' (e.g. Trainer.steps = 500)."
        )
    return f"{where}: {(error.msg or '').strip()}{shown}"


def full_names(message: str) -> str:
    """`@a.X or @b.X` from gin's "Ambiguous selector 'X', matches ['a.X', 'b.X']"."""
    m = re.search(r"matches \[([^\]]*)\]", message)
    names = re.findall(r"'([\w.]+)'", m.group(1)) if m else []
    return " or ".join(f"@{name}" for name in names) or "@module.Name"


def explain_missing_binding(
    error: Exception, gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()
) -> str | None:
    """The message for gin's "Required bindings for `npz_file` not provided" (a
    `RuntimeError` raised when a configurable with a `gin.REQUIRED` argument is called),
    or None for any other error."""
    m = re.search(r"Required bindings for `([\w.]+)` not provided in config: \[(.*)\]", str(error))
    if not m:
        return None
    owner = m.group(1).rsplit(".", 1)[-1]
    params = re.findall(r"'(\w+)'", m.group(2))
    first = f"{owner}.{params[0]}" if params else owner
    example = '"data.npz"' if first == "npz_file.path" else "..."
    unset = ", ".join(f"{owner}.{p}" for p in params) or owner
    message = (
        f"{unset} {'is' if len(params) < 2 else 'are'} not set; bind it, e.g. "
        f"--gin_param='{first} = {example}'"
    )
    pattern = re.compile(rf"@([\w./]*/)?{re.escape(owner)}\b")
    places = _places(pattern, gin_files, gin_params)
    if places:
        message += f"\n  {owner} is used at: {', '.join(places)}"
    return message


def _places(
    pattern: re.Pattern[str], gin_files: Sequence[str], gin_params: Sequence[str]
) -> list[str]:
    """`file:line` of the lines of `gin_files` that match, then the matching params."""
    places = []
    for path in gin_files:
        try:
            with open(path) as f:
                places += [f"{path}:{i}" for i, line in enumerate(f, 1) if pattern.search(line)]
        except (OSError, UnicodeDecodeError):
            continue
    return places + [f"--gin_param={p!r}" for p in gin_params if pattern.search(p)]


def locate_bindings(selector: str, gin_files: list[str], gin_params: list[str]) -> list[str]:
    """Where `Configurable.param` is bound: `file:line` for files, `--gin_param` else."""
    configurable, _, param = selector.rpartition(".")
    pattern = re.compile(rf"^\s*([\w./]*\b)?{re.escape(configurable)}\.{re.escape(param)}\s*=")
    return _places(pattern, gin_files, gin_params)


def explain_call_error(error: Exception, gin_files: list[str], gin_params: list[str]) -> str:
    """Adds where a rejected `Configurable.param` was bound to a constructor's error."""
    message = str(error).strip()
    if unknown := unknown_arguments.explain(message, gin_files, gin_params):
        return unknown
    if m := re.search(r"\b([A-Za-z]\w*\.\w+) must\b", message):
        places = locate_bindings(m.group(1), gin_files, gin_params)
        if places:
            message += f"\n  bound at: {', '.join(places)}"
    return message
