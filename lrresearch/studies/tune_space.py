"""The search space of `lrresearch tune`: `--search` flags as Optuna distributions.

`--search` reads exactly `sweep --sample`'s syntax (`sampling.parse_sample`), mapped to
Optuna's distributions:

| `--search` | Optuna |
|---|---|
| `uniform(low, high)` | `FloatDistribution(low, high)` |
| `loguniform(low, high)` | `FloatDistribution(low, high, log=True)` |
| `intuniform(low, high)` | `IntDistribution(low, high)` |
| `logintuniform(low, high)` | `IntDistribution(low, high, log=True)` |
| `choice([v1, ...])` | `CategoricalDistribution` of the values' gin source |

A trial's parameters are named by their binding (`WarmupCosineController.base_lr`) and
bound as gin source after the study's `--gin_file`s and `--gin_param`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import optuna

from lrresearch.config import parse as config
from lrresearch.studies import sampling
from lrresearch.studies.sweep import _label

EXAMPLE = "e.g. --search='WarmupCosineController.base_lr=loguniform(1e-4, 1e-1)'"
# An int range with at most this many values is a grid axis (each value a point).
MAX_GRID_INTS = 1000


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The `--search` flags of one study, parsed (`parse_search`)."""

    samples: tuple[sampling.Sample, ...]

    def drawn_from(self) -> dict[str, sampling.Distribution]:
        """`{binding: distribution}`, for the HParams experiment's domains."""
        return {s.name: s.distribution for s in self.samples}

    def suggest(self, trial: optuna.Trial) -> tuple[dict[str, str], dict[str, Any]]:
        """The trial's values: `({binding: gin source}, {binding: value})`, the value a
        float, an int, or the gin source of a `choice`."""
        bindings, values = {}, {}
        for sample in self.samples:
            d, name = sample.distribution, sample.name
            if d.kind == "choice":
                value = trial.suggest_categorical(name, list(d.choices))
            elif d.is_int:
                log = d.kind == "logintuniform"
                value = trial.suggest_int(name, int(d.low), int(d.high), log=log)
            else:
                log = d.kind == "loguniform"
                value = trial.suggest_float(name, float(d.low), float(d.high), log=log)
            bindings[name], values[name] = d.gin(value), value
        return bindings, values

    def run_name(self, number: int, bindings: dict[str, str], values: dict[str, Any]) -> str:
        """`NNN-<param=value>-...` as a sweep names its points, NNN the trial number."""
        labels = [_label(name, bindings[name], values[name]) for name in bindings]
        return f"{number:03d}-{'-'.join(labels)}"

    def grid(self) -> dict[str, list]:
        """The search space of `optuna.samplers.GridSampler`: every axis discrete.

        Raises:
          config.ConfigError: an axis is continuous (named by its `--search`)."""
        grid = {}
        for sample in self.samples:
            d = sample.distribution
            if d.kind == "choice":
                grid[sample.name] = list(d.choices)
            elif d.is_int and d.high - d.low < MAX_GRID_INTS:
                grid[sample.name] = list(range(int(d.low), int(d.high) + 1))
            else:
                raise config.ConfigError(
                    f"{sample.flag}: --sampler grid needs every axis discrete, and "
                    f"{d.kind}(...) is not (or has more than {MAX_GRID_INTS} values); list "
                    f"the values, e.g. --search='{sample.name}=choice([1e-3, 1e-2, 1e-1])', "
                    "or use --sampler tpe or random"
                )
        return grid

    def grid_size(self) -> int:
        size = 1
        for values in self.grid().values():
            size *= len(values)
        return size

    def example_values(self) -> list[list]:
        """Each axis's ends (or choices): the values `sweep.check_axes` parses."""
        out = []
        for s in self.samples:
            d = s.distribution
            out.append(list(d.choices) if d.kind == "choice" else [d.low, d.high])
        return out


def parse_search(specs: Sequence[str]) -> SearchSpace:
    """The `--search` flags, parsed; a ConfigError names the flag at fault."""
    if not specs:
        raise config.ConfigError(f"tune needs one or more --search, {EXAMPLE}")
    try:
        samples = tuple(sampling.parse_sample(spec, "--search") for spec in specs)
    except sampling.SampleError as e:
        raise config.ConfigError(str(e).replace("e.g. --sample=", "e.g. --search=")) from None
    names = [s.name for s in samples]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise config.ConfigError(f"--search: {', '.join(twice)} is searched twice; give it once")
    return SearchSpace(samples)
