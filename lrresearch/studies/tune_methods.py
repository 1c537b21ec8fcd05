"""`lrresearch tune --method=NAME=SOURCE`: one Optuna study per method, one study folder.

Each `--method` (`studies.methods`, the syntax and scoping of `sweep --method`) is an
`Arm` of the study: its own Optuna study in the storage, named `<study_name>/<NAME>`,
its own search space (the unprefixed `--search`es and its `NAME:` ones) and its own
`--trials N` finished trials. Its runs sit in the study folder itself, named
`<NAME>-NNN-<param=value>-...` (NNN its trial number, counted per method, so the
method leads: its runs sort together), where `compare` and TensorBoard find them;
`study.json` lists every run with its method (key "runs", read by
`analysis.bindings.method_of`), as `sweep.json` does.

A method with nothing to search (no `--search` applies to it: a parameter-free method)
runs one trial: its configuration is fixed, and more trials would train the same run
again. Without `--method` the study is one arm, named `<study_name>`, as before.

Workers take the method with the fewest finished + running trials (`pick`), so the
methods advance together and a study stopped half-way is balanced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from lrresearch.config import parse as config
from lrresearch.studies import methods as study_methods
from lrresearch.studies.tune_space import EXAMPLE, SearchSpace, parse_search

STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"  # serializes the workers' updates of study.json on this machine


@dataclasses.dataclass(frozen=True)
class Arm:
    """One method of a study (or the whole study, `method` None): its search space."""

    method: study_methods.Method | None
    space: SearchSpace

    @property
    def name(self) -> str:
        """The method's name, "" without `--method`."""
        return self.method.name if self.method else ""

    def study_name(self, study: str) -> str:
        """Its Optuna study's name in the storage: `<study>/<method>`, or `study`."""
        return f"{study}/{self.name}" if self.method else study

    def target(self, trials: int) -> int:
        """Finished trials it stops at: `trials`, or 1 with nothing to search."""
        return trials if self.space.samples else 1

    def layers(self, bindings: dict[str, str]) -> list[config.Layer]:
        """`config.parse`'s `then` for a trial: the method, then the drawn bindings."""
        drawn = config.Layer((), tuple(f"{k} = {v}" for k, v in bindings.items()), "--search")
        return [self.method.layer(), drawn] if self.method else [drawn]

    def run_name(self, number: int, bindings: dict[str, str], values: dict[str, Any]) -> str:
        """`NNN-<param=value>-...`, and `<method>-NNN-...` with a method."""
        name = self.space.run_name(number, bindings, values).rstrip("-")
        return f"{self.name}-{name}" if self.method else name

    def named_in_errors(self) -> contextlib.AbstractContextManager:
        """A ConfigError inside names the `--method` it was checked under."""
        return study_methods.Space(self.method, {}).named_in_errors()


def arms(
    method_specs: Sequence[str], search: Sequence[str], search_path: Sequence[str] = ()
) -> list[Arm]:
    """The study's arms, in `--method` order (one, `method` None, without any).

    Raises:
      config.ConfigError: a bad `--method` or `--search`, a prefix that names no
        method, or no `--search` for any method; the message names the flag.
    """
    if not method_specs:
        return [Arm(None, parse_search(search))]
    methods = study_methods.parse_methods(method_specs, search_path)
    found = []
    for space in study_methods.spaces(methods, {"--search": list(search)}):
        own = space.axes["--search"]
        with space.named_in_errors():
            found.append(Arm(space.method, parse_search(own) if own else SearchSpace(())))
    if not any(arm.space.samples for arm in found):
        raise config.ConfigError(
            f"tune needs one or more --search ({EXAMPLE}, or 'NAME:...' for one "
            "--method); methods with nothing to search are compared by `sweep --method`"
        )
    return found


def pick(counts: Sequence[tuple[int, int]]) -> int | None:
    """The arm to ask a trial of, from each arm's `(finished + running, target)`: the
    one with the fewest, the first of equals; None when every arm has its target."""
    open_ = [i for i, (started, target) in enumerate(counts) if started < target]
    return min(open_, key=lambda i: counts[i][0]) if open_ else None


@contextlib.contextmanager
def _locked(study_dir: str) -> Iterator[None]:
    with open(os.path.join(study_dir, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_run(study_dir: str, run: str, method: str, trial: int) -> None:
    """Adds `{"run", "method", "trial"}` to `study.json`'s "runs" (once per run),
    under a lock: several workers on this machine write it."""
    from lrresearch.training.run_dir import write_atomically

    path = os.path.join(study_dir, STUDY_FILE)
    with _locked(study_dir):
        with open(path) as f:
            content = json.load(f)
        runs = content.setdefault("runs", [])
        if any(entry.get("run") == run for entry in runs):
            return
        runs.append({"run": run, "method": method, "trial": trial})
        write_atomically(path, json.dumps(content, indent=2))
