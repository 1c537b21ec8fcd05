"""Random sweep points: distributions written in gin syntax, drawn with a seed.

`--sample='LossTrendController.max_lr=loguniform(1e-3, 1)'` draws the binding's value
from a distribution; `sample_values` draws `n` of them with numpy's `Generator`.
Each binding has its own generator, seeded from `(seed, crc32(binding name))`, so
adding or removing another `--sample` leaves a binding's draws unchanged.

| distribution | draws |
|---|---|
| `uniform(low, high)` | a float in `[low, high)` |
| `loguniform(low, high)` | a float whose log is uniform: each decade equally often (`0 < low`) |
| `intuniform(low, high)` | an int in `[low, high]`, both included |
| `logintuniform(low, high)` | an int in `[low, high]` whose log is uniform (`1 <= low`) |
| `choice([v1, v2, ...])` | one of the gin values (`@Name()` references and tuples too) |
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import zlib
from typing import Any

import numpy as np

from lrresearch.config import parse as config

EXAMPLE = "e.g. --sample='LossTrendController.max_lr=loguniform(1e-3, 1)'"
KINDS = ("uniform", "loguniform", "intuniform", "logintuniform", "choice")


class SampleError(config.ConfigError):
    """A `--sample` that cannot be drawn from; the message names the flag and the fix."""


def split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at each `separator` outside quotes and brackets, each part stripped
    (empty parts kept): `split_top_level("a, f(b, c), 'd,e'", ",")` ->
    `["a", "f(b, c)", "'d,e'"]`."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    return [*parts, current.strip()]


def split_values(
    text: str, flag: str = "--sweep", example: str = "e.g. --sweep='Trainer.seed=[0, 1, 2]'"
) -> list[str]:
    """Splits a gin list literal `[a, b(c, d), 'e,f']` into its elements' source.

    `flag` names the argument in errors (the whole `--sweep='name=[...]'`), `example`
    shows a correct one."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SampleError(f"{flag}: the values must be a list in brackets, got {text!r}; {example}")
    items = split_top_level(text[1:-1], ",")
    if items and not items[-1]:
        items.pop()  # a trailing comma
    if not all(items):
        raise SampleError(f"{flag}: the list {text!r} has an empty value")
    if not items:
        raise SampleError(f"{flag}: the list of values is empty; give one or more, {example}")
    return items


def literal(source: str) -> bool | int | float | str:
    """A gin value's Python scalar (`'64'` -> 64, `"'adam'"` -> 'adam'), else its source
    (`@ConstantController()`, `(8, 8)`): what sweep.json and HParams record."""
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source
    return value if isinstance(value, (bool, int, float, str)) else source


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One `--sample`'s distribution. `low`/`high` for the numeric kinds, `choices`
    (gin source) for `choice`."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    @property
    def is_int(self) -> bool:
        return self.kind in ("intuniform", "logintuniform")

    def draw(self, rng: np.random.Generator, n: int) -> list[Any]:
        """`n` values: Python floats or ints, or the chosen gin source for `choice`."""
        if self.kind == "choice":
            return [self.choices[i] for i in rng.integers(0, len(self.choices), n)]
        if self.kind == "uniform":
            return [float(v) for v in rng.uniform(self.low, self.high, n)]
        if self.kind == "loguniform":
            logs = rng.uniform(math.log(self.low), math.log(self.high), n)
            return [float(min(max(math.exp(v), self.low), self.high)) for v in logs]
        if self.kind == "intuniform":
            return [int(v) for v in rng.integers(int(self.low), int(self.high), n, endpoint=True)]
        # logintuniform: log-uniform over [low, high + 1), floored: each integer k has
        # probability log((k + 1) / k) / log((high + 1) / low).
        logs = rng.uniform(math.log(self.low), math.log(self.high + 1), n)
        return [int(min(math.floor(math.exp(v)), self.high)) for v in logs]

    def gin(self, value: Any) -> str:
        """The gin source that binds `value`."""
        return value if self.kind == "choice" else repr(value)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One `--sample` flag: the binding it draws and its distribution."""

    spec: str
    name: str
    distribution: Distribution
    flag_name: str = "--sample"  # `lrresearch tune` reads the same syntax as --search

    @property
    def flag(self) -> str:
        return f"{self.flag_name}={self.spec!r}"


def _numbers(kind: str, inner: str, flag: str) -> tuple[float, float]:
    try:
        args = ast.literal_eval(f"({inner},)") if inner.strip() else ()
    except (ValueError, SyntaxError):
        args = None
    numeric = args is not None and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args
    )
    if not numeric or len(args) != 2:
        raise SampleError(
            f"{flag}: {kind} takes two finite numbers, {kind}(low, high), got "
            f"{kind}({inner}); {EXAMPLE}"
        )
    low, high = args
    if kind in ("intuniform", "logintuniform") and not all(isinstance(a, int) for a in args):
        raise SampleError(
            f"{flag}: {kind} takes integers, got {kind}({inner}); for floats use "
            f"{kind.replace('int', '')}(low, high)"
        )
    if not low < high:
        raise SampleError(f"{flag}: {kind} needs low < high, got low={low!r}, high={high!r}")
    if kind == "loguniform" and low <= 0:
        raise SampleError(
            f"{flag}: loguniform needs 0 < low, got low={low!r}; {EXAMPLE}, or uniform(low, high)"
        )
    if kind == "logintuniform" and low < 1:
        raise SampleError(
            f"{flag}: logintuniform needs 1 <= low, got low={low!r}; use intuniform(low, high)"
        )
    return low, high


def parse_sample(spec: str, flag_name: str = "--sample") -> Sample:
    """`'LossTrendController.max_lr=loguniform(1e-3, 1)'` -> its `Sample` (errors name
    the flag as `flag_name`).

    Raises:
      SampleError: the text is not `Configurable.param=kind(...)`, the kind is
        unknown, or its arguments are not valid for it.
    """
    flag = f"{flag_name}={spec!r}"
    match = re.fullmatch(r"\s*([\w./]+)\s*=\s*(\w+)\s*\((.*)\)\s*", spec, re.DOTALL)
    if not match:
        raise SampleError(
            f"{flag}: must look like 'Configurable.param=distribution(...)', {EXAMPLE}"
        )
    name, kind, inner = match.groups()
    if kind not in KINDS:
        raise SampleError(
            f"{flag}: unknown distribution {kind!r}; use one of "
            f"{', '.join(f'{k}(...)' for k in KINDS)}, {EXAMPLE}"
        )
    if kind == "choice":
        example = "e.g. --sample='Trainer.batch_size=choice([32, 64, 128])'"
        choices = split_values(inner, flag, example)
        return Sample(spec, name, Distribution(kind, choices=tuple(choices)), flag_name)
    low, high = _numbers(kind, inner, flag)
    return Sample(spec, name, Distribution(kind, low, high), flag_name)


def sample_values(sample: Sample, seed: int, n: int) -> list[Any]:
    """`n` draws of `sample`, the same for the same `seed` and binding name."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
    return sample.distribution.draw(rng, n)


def domains(samples: list[Sample]) -> dict[str, Distribution]:
    """Each sampled binding's distribution for the HParams experiment: one binding
    sampled by several `--method`s from intervals of one kind spans them all; from
    different kinds, it is left out (its values drawn are listed instead)."""
    found: dict[str, Distribution | None] = {}
    for sample in samples:
        dist, seen = sample.distribution, found.get(sample.name, sample.distribution)
        if seen is None or seen.kind != dist.kind or dist.kind == "choice":
            found[sample.name] = dist if seen == dist else None
        else:
            found[sample.name] = Distribution(
                dist.kind, min(seen.low, dist.low), max(seen.high, dist.high)
            )
    return {name: dist for name, dist in found.items() if dist is not None}
