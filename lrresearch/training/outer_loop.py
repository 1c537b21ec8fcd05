"""The outer loop of a run: everything between the trainer's compiled calls.

As in tensorflow/models' orbit (`orbit/controller.py`), the trainer (`Trainer`: the
compiled step, the inner loop, evaluation) knows nothing of run directories; this
module owns the run: the run directory (`open_run`: its lock, `config.gin`, the
summary writer), checkpoints and resume, progress lines, Ctrl-C and the non-finite
stop. It knows the trainer only as a `protocol.RunnableTrainer` (reads and method
calls, no attribute written) and asks the trainer's `cadences` where each compiled
call stops and what is due after it. After each call it runs a short list of actions
(`_Loop.actions`): evaluate, save, report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gin
import tensorflow as tf

from lrresearch.controllers import evaluation
from lrresearch.logs import summaries
from lrresearch.logs.rows import BlockWriter
from lrresearch.optimizers import whole_step
from lrresearch.training import distribute, resume
from lrresearch.training.arguments import with_default_controller
from lrresearch.training.open_run import OpenRun, open_run
from lrresearch.training.protocol import RunnableTrainer
from lrresearch.training.run_dir import disk_full_message, is_disk_full
from lrresearch.workloads import tf_data_cache


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm stayed NaN/Inf for too many batches in a row."""


class DiskFullError(RuntimeError):
    """The disk of the run directory filled up; the run stays resumable."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: a checkpoint was saved and summaries flushed."""


class StopRun(Exception):  # noqa: N818 (a request, not an error)
    """Raised by an `on_eval` callback to end the run after this evaluation (a pruned
    trial of `lrresearch tune`); the loop then saves and raises `TrainingStopped`."""


class TrainingStopped(Exception):  # noqa: N818 (as TrainingInterrupted)
    """An `on_eval` callback stopped the run (its `StopRun` is `reason`) after `step`
    batches: summaries flushed and a checkpoint saved, as on Ctrl-C."""

    def __init__(self, step: int, reason: StopRun):
        super().__init__(f"stopped at step {step}: {reason}")
        self.step, self.reason = step, reason


# Called after each evaluation with (batches trained, {"loss": ..., "<metric>": ...}).
EvalCallback = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports (also printed as the one-line summary).

    Attributes:
      evals: the last evaluation, `{"loss": ..., "<metric name>": ...}` (empty if the
        run has no eval data).
      began: the step this process started at (non-zero after a resume).
    """

    run_dir: str
    steps: int
    seconds: float
    steps_per_second: float
    final_loss: float
    final_lr: float
    evals: dict[str, float] = dataclasses.field(default_factory=dict)
    first_call_seconds: float = float("nan")
    began: int = 0
    # The step the optimizer applied (`optimizer/effective_lr`) when it sets its own
    # step size (Prodigy, D-Adaptation, ...): `final_lr` is then a multiplier of it.
    final_step_size: float | None = None

    @property
    def eval_loss(self) -> float:
        return self.evals.get("loss", float("nan"))

    @property
    def eval_accuracy(self) -> float:
        return self.evals.get("accuracy", float("nan"))

    def summary_line(self) -> str:
        from lrresearch.logs.board import view_command

        if self.steps <= self.began:
            return (
                f"done: nothing to train: {self.run_dir} is complete at step {self.steps} "
                "(to continue it: --resume --gin_param='Trainer.steps = <more>')"
            )
        evals = "".join(f", eval/{k} {v:.4f}" for k, v in self.evals.items())
        return (
            f"done: {self.steps} steps in {self.seconds:.1f} s ({self.steps_per_second:,.0f} "
            f"steps/s after a {self.first_call_seconds:.1f} s first call that traced the "
            f"step); loss/batch {self.final_loss:.4f}, "
            f"{lr_text(self.final_lr, self.final_step_size, '.3g')}{evals} "
            f"-> {self.run_dir}; view: {view_command(self.run_dir)}"
        )


def fit(
    trainer: RunnableTrainer,
    logdir: str = "runs",
    run_name: str | None = None,
    quiet: bool = False,
    operative_config: Callable[[], str] | None = None,
    resume_run: bool = False,
    on_eval: EvalCallback | None = None,
) -> TrainResult:
    """Trains `trainer.cadences.steps` batches into a run directory under `logdir`.

    See `Trainer.fit` (which calls this) for what is written and raised.
    """
    trainer.build()
    prefix = run_prefix(trainer.controller, trainer.optimizer)
    say = resume.print_nothing if quiet else (lambda *a: print(*a, flush=True))
    config = with_default_controller((operative_config or gin.operative_config_str)())
    # Under MultiWorkerMirroredStrategy every worker runs this; only the chief owns the
    # run directory. The others write no summaries, and save their identical
    # checkpoints (TF asks every worker to take part in a save) to a temporary folder.
    chief = distribute.is_chief(trainer.strategy)
    worker = distribute.worker_name(trainer.strategy)
    if worker and run_name is None:
        raise ValueError(
            "a multi-worker run needs --run_name, so that every worker agrees on the "
            "run directory (tools/launch_local_workers.py passes one)"
        )
    if resume_run and run_name is None:
        raise ValueError("resume needs the run's name (--run_name)")
    # A resumed run keeps its config.gin until the restore says it starts again.
    fresh_config = None if resume_run else config
    with open_run(logdir, run_name, prefix, fresh_config, resume=resume_run, chief=chief) as run:
        try:
            began = None
            if resume_run:
                began = resume.resume(trainer, run.path, config, say, chief, run.previous_start)
                if began is None:
                    run.write_config(config)
            worker_note = f" ({worker}: no summaries; checkpoints written and deleted)"
            say(
                f"run directory: {run.path}"
                + (f" (resumed at step {began})" if began is not None else "")
                + _replicas(trainer.strategy)
                + ("" if chief else worker_note)
            )
            return _Loop(trainer, run, began, config, say, worker, on_eval).run()
        except (tf.errors.OpError, OSError) as e:
            if (message := tf_data_cache.explain_lock_error(e, run.path)) is not None:
                raise tf_data_cache.CacheLockError(message) from None
            if not is_disk_full(e):
                raise
            raise DiskFullError(disk_full_message(run.path, e)) from None


def _replicas(strategy: tf.distribute.Strategy | None) -> str:
    """` (mirrored, 2 replicas)` for the run header under a strategy, else ``."""
    if strategy is None:
        return ""
    count = strategy.num_replicas_in_sync
    return f" ({distribute.describe(strategy)}, {count} replica{'s' * (count != 1)})"


def run_prefix(controller: Any, optimizer: Any) -> str:
    """A run's default name before its time stamp: the controller's class without
    "Controller" (`WarmupCosine`), after the optimizer's class when the optimizer sets
    its own step size (`Prodigy-WarmupCosine`), whose LR only multiplies that step."""
    prefix = type(controller).__name__.removesuffix("Controller") or "run"
    if whole_step.has_own_step(optimizer):
        return f"{type(optimizer).__name__}-{prefix}"
    return prefix


def step_size(optimizer: Any) -> float | None:
    """The step the optimizer applied to the latest batch (`optimizer/effective_lr`), for
    one that sets its own step size; None for any other (a host read: between calls)."""
    value = whole_step.optimizer_summaries(optimizer).get("optimizer/effective_lr")
    return None if value is None else float(value)


def lr_text(lr: float, own_step: float | None, spec: str = ".4g") -> str:
    """`lr 0.1`, or `step size 0.0123 (lr 1)` when the optimizer sets its own step."""
    if own_step is None:
        return f"lr {lr:{spec}}"
    return f"step size {own_step:{spec}} (lr {lr:{spec}})"


class _Loop:
    """One process's share of a run: compiled calls, and the actions between them."""

    def __init__(
        self,
        trainer: RunnableTrainer,
        run: OpenRun,
        began: int | None,
        config: str,
        say: Callable[..., None],
        worker: str,
        on_eval: EvalCallback | None = None,
    ):
        self.trainer, self.run_dir, self.began = trainer, run.path, began
        self.open_run, self.cadences = run, trainer.cadences
        self.config, self.say, self.chief, self.worker = config, say, run.chief, worker
        self.done = began or 0
        self.on_eval = on_eval
        self.evals: dict[str, float] = {}
        self.warned: set[str] = set()
        self.loss = tf.constant(float("nan"))
        self.side_seconds = 0.0  # eval and checkpoints, not training
        self.first_done, self.first_seconds = 0, float("nan")
        self.trained: float | None = None  # when training and its logging ended
        self.save = self._saver()
        self.writer = run.writer  # opened here: after a resume cut the event files
        # The per-batch blocks, written on a thread while the next call trains (chief).
        self.log: BlockWriter | None = None
        self.actions = [self._evaluate, self._checkpoint, self._guard, self._report]

    def _saver(self) -> Callable[[int], None]:
        if self.chief:
            manager = tf.train.CheckpointManager(
                self.trainer.checkpoint,
                os.path.join(self.run_dir, "checkpoints"),
                max_to_keep=self.trainer.keep_checkpoints,
            )

            def save_chief(number: int) -> None:
                with self.trainer.eval_weights():  # a checkpoint holds what to evaluate
                    manager.save(checkpoint_number=number)

            return save_chief

        def save(number: int) -> None:
            # Every worker takes part in a save; a non-chief's copy is not needed.
            prefix = f"lrresearch-{self.worker}-"
            with tempfile.TemporaryDirectory(prefix=prefix) as folder, self.trainer.eval_weights():
                tf.train.CheckpointManager(self.trainer.checkpoint, folder, 1).save(number)

        return save

    def run(self) -> TrainResult:
        t, cadences = self.trainer, self.cadences
        self.start = time.perf_counter()
        # Ctrl-C / SIGTERM stop the run between compiled calls (every worker at the
        # same step), never inside TensorFlow's Python code.
        stop = distribute.StopOnSignal(t.strategy if self.worker else None)
        finished = False
        try:
            # Fresh compiled loops per run (per writer), cadences counted from `done`.
            with t.session(self.done, self.writer if self.chief else None) as self.log:
                try:
                    with self.writer.as_default(), stop:
                        self._header()
                        while self.done < cadences.steps:
                            n = cadences.next_boundary(self.done) - self.done
                            self.loss = t.run_steps(n)
                            self.done += n
                            stop.check()
                            if not self.first_done:
                                self.first_done = self.done
                                self.first_seconds = time.perf_counter() - self.start
                            last = self.done == cadences.steps
                            for action in self.actions:
                                action(last)
                    self._flush()
                    self.trained = time.perf_counter()  # every block written: rate ends
                    self.save(self.done)
                    finished = True
                except KeyboardInterrupt:
                    self._interrupted()
                except StopRun as e:
                    self._stopped(e)
        finally:
            # When something already failed (a full disk, say), a failing flush must not
            # hide it; after a clean finish, a failing flush is the error. Either way the
            # pending block is written first (`session`), then the writer flushed.
            failing = (tf.errors.OpError, OSError)
            with contextlib.nullcontext() if finished else contextlib.suppress(*failing):
                self.open_run.close()
        return TrainResult(
            self.run_dir,
            self.done,
            time.perf_counter() - self.start,
            self._rate(),
            float(self.loss),
            t.current_lr(),
            self.evals,
            self.first_seconds,
            self.began or 0,
            step_size(t.optimizer),
        )

    def _header(self) -> None:
        t = self.trainer
        if self.chief and self.began is None:
            summaries.text("config", summaries.config_markdown(self.config or "(defaults)"))
            own_step = whole_step.has_own_step(t.optimizer)  # logs optimizer/effective_lr
            summaries.write_run_header(t.hparams(), os.path.basename(self.run_dir), own_step)
        elif self.chief:
            summaries.mark_restart(self.writer, self.began)
        self._warn(t.controller.run_warnings(self.cadences.steps))

    # -- actions after each compiled call -------------------------------------------------
    def _evaluate(self, last: bool) -> None:
        if not (last or self.cadences.due("eval", self.done)):
            return
        began = time.perf_counter()
        evals = self.trainer.evaluation()
        if evals is None:  # no held-out data
            return
        self.evals = evals
        # A rule watching eval/<name> takes it now; the next batch acts on it.
        evaluation.observe(self.trainer.controller, evals)
        if self.log is not None:  # the event file stays in step order
            self.log.wait()
        for name, value in self.evals.items():
            summaries.scalar(f"eval/{name}", value, self.done - 1)
        self.side_seconds += time.perf_counter() - began
        if self.on_eval is not None:  # may raise StopRun (`_stopped`)
            self.on_eval(self.done, dict(self.evals))

    def _checkpoint(self, last: bool) -> None:
        # The last checkpoint is saved after the run's summaries are all written.
        if last or not self.cadences.due("checkpoint", self.done):
            return
        began = time.perf_counter()
        # Everything logged up to a checkpoint is on disk before it; what a killed
        # process logs after its last checkpoint is cut on resume.
        self._flush()
        self.save(self.done)
        self.side_seconds += time.perf_counter() - began

    def _guard(self, last: bool) -> None:
        """Stops the run after `max_consecutive_nonfinite` skipped batches in a row,
        with a checkpoint of the last good state (one scalar read per call, ~17 us)."""
        del last
        message = self.trainer.guard.stop_message(self.run_dir)
        if message:
            self._flush()
            self.save(self.done)
            raise NonFiniteLossError(message)

    def _report(self, last: bool) -> None:
        t, steps = self.trainer, self.cadences.steps
        if not (last or self.cadences.due("log", self.done)):
            return
        self._warn(t.controller.state_warnings())
        scale = float(t.guard.lr_scale.numpy())
        if scale < 1e-3:
            self._warn(
                [
                    f"{int(t.guard.skipped.numpy())} NaN/Inf batches were skipped in all, and "
                    f"each multiplied later LRs by Trainer.nonfinite_lr_factor: they are now "
                    f"x{scale:.3g} the controller's (0 after ~130 skips at 0.5); look for "
                    "the NaN/Inf in the data, or lower the LR"
                ]
            )
        rate = self._rate()
        key = "accuracy" if any(m.name == "accuracy" for m in t.metrics) else "loss"
        value = self.evals.get(key)
        evaluation = "-" if value is None or math.isnan(value) else f"{value:.3f}"
        label = "acc" if key == "accuracy" else key
        self.say(
            f"step {self.done:>{len(str(steps))}}/{steps}  "
            f"loss {float(self.loss):.4f}  {lr_text(t.current_lr(), step_size(t.optimizer))}  "
            f"eval/{label} {evaluation}  {rate:,.0f} steps/s  "
            f"ETA {(steps - self.done) / rate:.0f}s"
        )

    def _warn(self, messages: list[str]) -> None:
        """Prints each of the controller's warnings once (to stderr, even with --quiet:
        a rule that does nothing for the run is news)."""
        for message in messages:
            if self.chief and message not in self.warned:
                print(f"warning: {message}", file=sys.stderr, flush=True)
        self.warned |= set(messages)

    def _interrupted(self) -> None:
        # `StopRequested` comes between compiled calls, where the step variable matches
        # the weights (a second Ctrl-C, a plain KeyboardInterrupt, may come anywhere).
        at = int(self.trainer.step.numpy())
        self._flush()
        self.save(at)
        raise TrainingInterrupted(
            f"interrupted at step {at}: checkpoint saved and summaries flushed in "
            f"{self.run_dir}; continue with --resume --run_name "
            f"{os.path.basename(self.run_dir)}"
        ) from None

    def _stopped(self, reason: StopRun) -> None:
        """The `on_eval` callback ended the run: saved like an interrupted one."""
        self._flush()
        self.save(self.done)
        raise TrainingStopped(self.done, reason) from None

    def _flush(self) -> None:
        """Writes the pending block of per-batch summaries and flushes the writer: the
        summaries of every batch trained so far are on disk when this returns."""
        if self.log is not None:
            self.log.wait()
        self.writer.flush()

    def _rate(self) -> float:
        """Training steps per second after the first call (which includes tracing), or
        overall if there was only one call; eval and checkpoint time left out (the last
        checkpoint, and closing the writer, come after `trained`)."""
        end = time.perf_counter() if self.trained is None else self.trained
        elapsed = end - self.start - self.side_seconds
        if self.done > self.first_done and elapsed > self.first_seconds:
            return (self.done - self.first_done) / (elapsed - self.first_seconds)
        return max(self.done - (self.began or 0), 1) / max(elapsed, 1e-9)
