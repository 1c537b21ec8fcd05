"""`Cadences`: where each compiled call stops and what is due after it, for both loops,
against a brute-force walk over the batches; and the outer loop, which reads the
trainer only through `protocol.RunnableTrainer` and writes none of its attributes."""

from __future__ import annotations

import functools
import itertools

import gin
import pytest

from lrresearch.controllers import ConstantController
from lrresearch.training import outer_loop
from lrresearch.training.cadences import Cadences
from lrresearch.training.protocol import RunnableTrainer
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.models import mlp


def brute_calls(steps, per_call, end, start, stops):
    """The calls `[begin, end)` a walk over batches `start .. end - 1` makes, a call
    ending after batch b when b + 1 is `end`, fills `per_call` batches, or is a multiple
    of one of `stops`."""
    calls, begin = [], start
    for batch in range(start, end):
        after = batch + 1
        if after == end or after - begin == per_call or any(after % c == 0 for c in stops):
            calls.append((begin, after))
            begin = after
    return calls


def walk(cadences, start, end=None, per_call=None, summaries_only=False):
    calls, step = [], start
    while step < (cadences.steps if end is None else end):
        stop = cadences.next_boundary(step, end, per_call, summaries_only)
        assert stop > step, (cadences, step)
        calls.append((step, stop))
        step = stop
    return calls


def multiples(every, start, end):
    """Multiples of `every` in [start, end) (none when off)."""
    return set(range(0, end, every)) - set(range(start)) if every > 0 else set()


GRID = itertools.product(
    (1, 7, 12, 30),  # steps
    (1, 4, 100),  # steps_per_loop (100: larger than the run)
    (0, 1, 4, 50),  # eval_every (0: only at the end; 50: beyond the run)
    (0, 3, 40),  # checkpoint_every
    (None, 0, 6),  # log_every (None: about ten lines per run)
    (0, 1, 2, 5),  # histogram_every (1: every batch, no boundary)
    (None, 0, 1, 4),  # grad_norm_every (None: as histogram_every)
)


@pytest.mark.slow
def test_cadences_match_a_brute_force_walk_over_the_batches():
    checked = 0
    for steps, spl, eval_every, ckpt, log, hist, norms in GRID:
        cadences = Cadences.resolve(
            steps=steps, steps_per_loop=spl, eval_every=eval_every, checkpoint_every=ckpt,
            histogram_every=hist, grad_norm_every=norms, log_every=log,
        )  # fmt: skip
        norms = hist if norms is None else norms
        log = max(steps // 10, 1) if log is None else log
        groups = {"grad_norms": norms, "histograms": hist}
        periodic = [e for e in groups.values() if e > 1]
        run_stops = periodic + [c for c in (eval_every, ckpt, log) if c > 0]
        assert cadences.every_step_groups == {g for g, e in groups.items() if e == 1}
        from_zero = walk(cadences, 0)
        assert cadences.capacity == max(b - a for a, b in from_zero)
        for start in sorted({0, steps // 2, steps - 1}):  # a resume starts mid-run
            calls = walk(cadences, start)
            assert calls == brute_calls(steps, spl, steps, start, run_stops)
            ends = {b for _, b in calls}
            for what, every in (("eval", eval_every), ("checkpoint", ckpt), ("log", log)):
                expected = {s for s in multiples(every, start + 1, steps + 1)} | {steps}
                assert {e for e in ends if cadences.due(what, e)} == expected, what
            for group, every in groups.items():
                due = {a for a, _ in calls if group in cadences.groups_due(a)}
                assert due == (multiples(every, start, steps) if every > 1 else set()), group
            assert max(b - a for a, b in calls) <= cadences.capacity
            # `Trainer.run_steps(n, max_per_call)` outside a run (lr-find, profile): calls
            # stop at the summary groups' cadences only, and may go past `steps`.
            end, limit = start + steps + 3, max(1, spl - 1)
            inner = walk(cadences, start, end, limit, summaries_only=True)
            assert inner == brute_calls(steps, limit, end, start, periodic)
            checked += 1
    assert checked > 10_000


def test_due_names_what_it_knows():
    cadences = Cadences.resolve(10, 5, eval_every=0, checkpoint_every=0, histogram_every=0)
    with pytest.raises(ValueError, match=r"Cadences\.due: what must be eval, checkpoint or log"):
        cadences.due("histograms", 5)  # type: ignore[arg-type]


def small_trainer(**kwargs) -> Trainer:
    gin.clear_config()
    arguments = dict(
        steps=4, steps_per_loop=2, histogram_every=0, eval_every=0, checkpoint_every=2,
        controller=ConstantController(lr=0.05), model=functools.partial(mlp, hidden=(8,)),
    )  # fmt: skip
    return Trainer(**{**arguments, **kwargs})


@pytest.mark.slow
def test_log_every_zero_prints_only_the_last_progress_line(tmp_path, capsys):
    """`Trainer.log_every = 0` is "off" as for every cadence (the old outer loop took
    it modulo 0 after the first call)."""
    small_trainer(log_every=0).fit(logdir=str(tmp_path), run_name="quiet")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 1 and lines[0].startswith("step 4/4"), lines


# The Protocol's attributes and methods.
MEMBERS = set(RunnableTrainer.__annotations__)
MEMBERS |= {n for n in vars(RunnableTrainer) if not n.startswith("_")}


class OnlyTheProtocol:
    """A trainer seen through `RunnableTrainer` only: reading anything else, or
    writing any attribute, fails the test."""

    def __init__(self, trainer: Trainer):
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name: str):
        if name not in MEMBERS:
            raise AttributeError(f"the outer loop read Trainer.{name}, not in the Protocol")
        return getattr(self._trainer, name)

    def __setattr__(self, name: str, value) -> None:
        raise AssertionError(f"the outer loop wrote Trainer.{name}")


@pytest.mark.slow
def test_outer_loop_reads_only_the_protocol_and_writes_no_trainer_attribute(tmp_path):
    first = outer_loop.fit(OnlyTheProtocol(small_trainer()), str(tmp_path), "run", quiet=True)
    assert first.steps == 4
    longer = OnlyTheProtocol(small_trainer(steps=6))
    resumed = outer_loop.fit(longer, str(tmp_path), "run", quiet=True, resume_run=True)
    assert (resumed.began, resumed.steps) == (4, 6)
