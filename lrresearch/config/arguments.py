"""A binding's arguments: a configurable's parameters, the closest names to a wrong one,
and Keras's "Argument(s) not recognized" for a gin binding as one screen naming it.

Keras optimizers take `**kwargs` (ours pass them on to Keras's base), so gin accepts a
binding of any name (`Prodigy.bogus_arg = 1`) and Keras rejects it at construction
with a message that names neither the class, nor the gin file, line or binding.
`config.explain_call_error` asks `explain` for those.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
from collections.abc import Sequence

import gin


def explain(message: str, gin_files: list[str], gin_params: list[str]) -> str:
    """For Keras's "Argument(s) not recognized: {'bogus': 1}" (an optimizer taking
    `**kwargs`, so gin accepted the binding): the bindings that passed them, each with
    its place and the class's parameters; for Keras's own argument checks, see
    `_keras_check`; "" for any other message."""
    if m := re.search(r"Argument `(\w+)` must\b", message):
        return _keras_check(message, m.group(1), gin_files, gin_params)
    m = re.search(r"Argument\(s\) not recognized: \{(.*)\}", message)
    if not m:
        return ""
    lines = []
    for argument in re.findall(r"'(\w+)':", m.group(1)):
        pattern = re.compile(rf"^\s*(?:[\w./]*?)([A-Za-z_]\w*)\.{re.escape(argument)}\s*=")
        for place, text in _matching_lines(pattern, gin_files, gin_params):
            owner = pattern.match(text).group(1)  # type: ignore[union-attr]
            params = [p for p in parameters_of(owner) if p != "kwargs"]
            params += [p for p in _keras_optimizer_parameters(owner) if p not in params]
            listed = f"\n  Its parameters are: {', '.join(params)}."
            hint = suggest(argument, params) or listed
            lines.append(
                f"{owner}.{argument} must be an argument of {owner}, got a binding at "
                f"{place}: {owner} has no parameter {argument!r} (Keras: {m.group(0)}); "
                f"remove the binding or fix its name{hint}"
            )
    return "\n".join(lines)


def _keras_check(message: str, argument: str, gin_files: list[str], gin_params: list[str]) -> str:
    """Keras's own check of a class a gin file builds ("Argument `decay_steps` must be
    > 0. Received: decay_steps=0", from `@keras.optimizers.schedules.CosineDecay()`),
    which names neither the class nor the binding: prefixed with the Keras binding of
    `argument`, with where it is bound; "" when no Keras class's binding of it is found."""
    pattern = re.compile(rf"^\s*(?:[\w.]*/)?([A-Za-z_][\w.]*)\.{re.escape(argument)}\s*=")
    found = [
        (place, owner)
        for place, text in _matching_lines(pattern, gin_files, gin_params)
        if _is_keras(owner := pattern.match(text).group(1))  # type: ignore[union-attr]
    ]
    if not found:
        return ""
    places = ", ".join(place for place, _ in found)
    return f"{found[-1][1]}.{argument}: {message}\n  bound at: {places}"


def _is_keras(configurable: str) -> bool:
    """Whether gin's `configurable` is a class or function of Keras itself."""
    try:
        target = gin.get_configurable(configurable)
    except (KeyError, ValueError):
        return False
    return getattr(target, "__module__", "").split(".")[0] == "keras"


def parameters_of(configurable: str) -> list[str]:
    """The parameter names of gin's `configurable` ([] if unknown)."""
    try:
        target = gin.get_configurable(configurable)
    except (KeyError, ValueError):
        return []
    with contextlib.suppress(TypeError, ValueError):
        return [p for p in inspect.signature(target).parameters if p != "self"]
    return []


def suggest(word: str, candidates: list[str]) -> str:
    """`Did you mean ...?` (a new line) for the closest of `candidates`, or ""."""
    close = difflib.get_close_matches(word, candidates, n=2, cutoff=0.75)
    return f"\n  Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _matching_lines(
    pattern: re.Pattern[str], gin_files: Sequence[str], gin_params: Sequence[str]
) -> list[tuple[str, str]]:
    """(`file:line` or `--gin_param=...`, the line) for each line that `pattern` matches."""
    found = []
    for path in gin_files:
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path) as f:
            found += [(f"{path}:{i}", line) for i, line in enumerate(f, 1) if pattern.match(line)]
    return found + [(f"--gin_param={p!r}", p) for p in gin_params if pattern.match(p)]


def _keras_optimizer_parameters(configurable: str) -> list[str]:
    """The arguments every Keras optimizer takes (`clipnorm`, ...) if `configurable` is
    a Keras optimizer (ours pass them on as `**kwargs`), else []."""
    import keras

    try:
        target = gin.get_configurable(configurable)
    except (KeyError, ValueError):
        return []
    if not (inspect.isclass(target) and issubclass(target, keras.optimizers.Optimizer)):
        return []
    names = inspect.signature(keras.optimizers.Optimizer.__init__).parameters
    return [p for p in names if p not in ("self", "kwargs")]
