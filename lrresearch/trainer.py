"""The custom training loop: one compiled step per batch, `steps_per_loop` per call.

Per batch, inside one `tf.function`: forward, mean loss, gradients, signals (global
norm, loss moving averages), controller -> LR, guard, `learning_rate.assign`, apply,
summaries. Python only runs the loop around it: eval, progress, checkpoints, all at
block boundaries, never per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gin
import keras
import numpy as np
import tensorflow as tf

from lrresearch import distribute, event_files, summaries
from lrresearch.controllers import Controller, GradNormController
from lrresearch.data import BatchSampler, DataError, Dataset, digits
from lrresearch.models import mlp

# RunDirExistsError and make_run_dir are also imported from here by other modules.
from lrresearch.rundir import (
    LOCK_FILE,
    ResumeError,
    RunDirExistsError,
    RunLock,
    binding_differences,
    disk_full_message,
    is_disk_full,
    make_run_dir,
    read_text,
    recover_checkpoint,
    run_path,
    write_atomically,
)
from lrresearch.signals import MovingAverage
from lrresearch.step import (
    all_reduce_sum,
    batch_signals,
    first_replica,
    set_lr,
    write_batch_summaries,
)

OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr),
    "adamw": lambda lr: keras.optimizers.AdamW(learning_rate=lr),
}
for _cls in (
    keras.optimizers.SGD,
    keras.optimizers.Adam,
    keras.optimizers.AdamW,
    keras.optimizers.RMSprop,
):
    gin.external_configurable(_cls, module="keras.optimizers")


def _silent(*args: object) -> None:
    del args


def _unrestored_values_filter(record: logging.LogRecord) -> bool:
    """Drops TF's "being deleted with unrestored values" report (and its per-value
    lines), which a restore that raised prints when it is garbage-collected: the
    `ResumeError` raised there says what did not fit."""
    message = record.getMessage()
    return not (
        "deleted with unrestored values" in message
        or "Value in checkpoint could not be found in the restored object" in message
    )


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf during training."""


class DiskFullError(RuntimeError):
    """The disk of the run directory filled up; the run stays resumable."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during `fit`: a checkpoint was saved and summaries flushed."""


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports (also printed as the one-line summary)."""

    run_dir: str
    steps: int
    seconds: float
    steps_per_second: float
    final_loss: float
    final_lr: float
    eval_loss: float
    eval_accuracy: float
    first_call_seconds: float = float("nan")
    began: int = 0  # the step this process started at (non-zero after a resume)

    def summary_line(self) -> str:
        if self.steps <= self.began:
            return (
                f"done: nothing to train: {self.run_dir} is complete at step {self.steps} "
                "(raise Trainer.steps to continue it)"
            )
        return (
            f"done: {self.steps} steps in {self.seconds:.1f} s ({self.steps_per_second:,.0f} "
            f"steps/s after a {self.first_call_seconds:.1f} s first call that traced the "
            f"step); loss/batch {self.final_loss:.4f}, lr {self.final_lr:.3g}, "
            f"eval/loss {self.eval_loss:.4f}, eval/accuracy {self.eval_accuracy:.4f} "
            f"-> {self.run_dir}"
        )


def make_optimizer(
    optimizer: str | Callable[..., keras.optimizers.Optimizer], initial_lr: float
) -> keras.optimizers.Optimizer:
    """Builds the optimizer from a short name or a class/factory taking `learning_rate`.

    The optimizer's LR must be a plain variable (not a Keras schedule): the controller
    assigns it every batch.
    """
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Trainer.optimizer: unknown optimizer {optimizer!r}; use one of "
                f"{sorted(OPTIMIZERS)} or a class such as @keras.optimizers.Adam"
            )
        return OPTIMIZERS[optimizer](initial_lr)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "Trainer.optimizer: pass the class or a short name, not an instance "
            "(write `@keras.optimizers.Adam`, without the parentheses)"
        )
    if not callable(optimizer):
        raise ValueError(f"Trainer.optimizer: expected a name or a class, got {optimizer!r}")
    return optimizer(learning_rate=initial_lr)


def _variable_names(variables: list[tf.Variable], model_name: str) -> list[str]:
    """Tag-friendly variable paths: `dense/kernel` rather than `mlp/dense/kernel`."""
    prefix = model_name + "/"
    return [v.path[len(prefix) :] if v.path.startswith(prefix) else v.path for v in variables]


def _check_cadence(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Trainer.{name} must be an int >= 0 (0 = off), got {value!r}")


@gin.configurable
class Trainer:
    """Trains a small classifier with a per-batch LR controller, logging every batch.

    Args:
      steps: number of batches to train (>= 1).
      controller: the per-batch LR strategy (default `GradNormController()`).
      optimizer: "sgd", "momentum", "nesterov", "adam", "adamw", or an optimizer class
        such as `@keras.optimizers.Adam` (configure it with its own gin bindings).
      batch_size: examples per batch (the last partial batch of an epoch is dropped so
        every batch has the same shape and the step is traced once).
      seed: seeds weights, shuffling and synthetic data.
      steps_per_loop: batches per compiled call; the LR still changes every batch.
      histogram_every: batches between `grad/` and `weights/` histograms (0 = off).
      grad_norm_every: batches between per-variable `grad/norm/` scalars (0 = off,
        1 = every batch; default: same as `histogram_every`).
      eval_every: batches between evaluations on the held-out split (0 = only at the
        end).
      dataset: a function returning a `Dataset` (`@digits`, `@synthetic`, `@npz_file`).
      model: a function `(input_shape, num_classes) -> keras.Model` (`@mlp`, `@cnn`).
      clip_norm: if set, clip gradients to this global norm after the signals are
        computed (`grad/global_norm` is always the unclipped norm).
      loss_ma_short: window of `loss/ma_short` in batches.
      loss_ma_long: window of `loss/ma_long` in batches.
      loss_ma_kind: "window" (plain mean of the last N) or "ema" (see `MovingAverage`).
      checkpoint_every: batches between checkpoints (0 = only at the end).
      keep_checkpoints: how many checkpoints to keep.
      log_every: batches between progress lines (default: about 10 lines per run).
      max_consecutive_nonfinite: a batch whose loss or gradient norm is NaN/Inf is
        skipped (no update; logged in `guard/skipped`); after this many in a row the
        run stops with a checkpoint of the last good state (0: stop at the first).
      nonfinite_lr_factor: every skipped batch multiplies all later LRs by this.
      deterministic: enable TF's op determinism (`enable_op_determinism`), so a run
        resumed from a checkpoint reproduces an uninterrupted one exactly.
    """

    def __init__(
        self,
        steps: int = 2000,
        controller: Controller | None = None,
        optimizer: str | Callable[..., keras.optimizers.Optimizer] = "sgd",
        batch_size: int = 64,
        seed: int = 0,
        steps_per_loop: int = 100,
        histogram_every: int = 100,
        grad_norm_every: int | None = None,
        eval_every: int = 500,
        dataset: Callable[[], Dataset] | Dataset = digits,
        model: Callable[..., keras.Model] = mlp,
        clip_norm: float | None = None,
        loss_ma_short: int = 10,
        loss_ma_long: int = 100,
        loss_ma_kind: str = "window",
        checkpoint_every: int = 500,
        keep_checkpoints: int = 3,
        log_every: int | None = None,
        deterministic: bool = False,
        max_consecutive_nonfinite: int = 10,
        nonfinite_lr_factor: float = 0.5,
    ):
        for name, value, minimum in (
            ("steps", steps, 1),
            ("batch_size", batch_size, 1),
            ("steps_per_loop", steps_per_loop, 1),
            ("keep_checkpoints", keep_checkpoints, 1),
            ("loss_ma_short", loss_ma_short, 1),
            ("loss_ma_long", loss_ma_long, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Trainer.{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Trainer.seed must be an int, got {seed!r}")
        for name, value in (
            ("histogram_every", histogram_every),
            ("eval_every", eval_every),
            ("checkpoint_every", checkpoint_every),
        ):
            _check_cadence(name, value)
        _check_cadence("grad_norm_every", grad_norm_every, allow_none=True)
        _check_cadence("log_every", log_every, allow_none=True)
        if clip_norm is not None and not (
            isinstance(clip_norm, (int, float))
            and not isinstance(clip_norm, bool)
            and math.isfinite(clip_norm)
            and clip_norm > 0
        ):
            raise ValueError(f"Trainer.clip_norm must be a number > 0 or None, got {clip_norm!r}")
        if controller is None:
            controller = GradNormController()
        if not isinstance(controller, Controller):
            raise ValueError(
                f"Trainer.controller must be a Controller instance such as "
                f"@GradNormController() (note the parentheses), got {controller!r}"
            )
        self.steps, self.controller, self.optimizer_spec = steps, controller, optimizer
        self.batch_size, self.seed, self.steps_per_loop = batch_size, seed, steps_per_loop
        self.histogram_every = histogram_every
        self.grad_norm_every = histogram_every if grad_norm_every is None else grad_norm_every
        self.eval_every, self.dataset_spec, self.model_fn = eval_every, dataset, model
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.checkpoint_every, self.keep_checkpoints = checkpoint_every, keep_checkpoints
        self.log_every = log_every if log_every is not None else max(steps // 10, 1)
        self.ma_short = MovingAverage(loss_ma_short, loss_ma_kind, name="loss_ma_short")
        self.ma_long = MovingAverage(loss_ma_long, loss_ma_kind, name="loss_ma_long")
        self.deterministic = bool(deterministic)
        _check_cadence("max_consecutive_nonfinite", max_consecutive_nonfinite)
        if not (isinstance(nonfinite_lr_factor, (int, float)) and 0 < nonfinite_lr_factor <= 1):
            raise ValueError(
                f"Trainer.nonfinite_lr_factor must be in (0, 1], got {nonfinite_lr_factor!r}"
            )
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.nonfinite_lr_factor = float(nonfinite_lr_factor)
        self.built = False

    # -- building -------------------------------------------------------------------
    def build(self) -> None:
        """Creates data, model, optimizer and the compiled functions (idempotent)."""
        if self.built:
            return
        keras.utils.set_random_seed(self.seed)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        data = self.dataset_spec() if callable(self.dataset_spec) else self.dataset_spec
        if not isinstance(data, Dataset):
            raise DataError(f"Trainer.dataset must return a Dataset, got {type(data).__name__}")
        if len(data.x_train) < self.batch_size:
            raise DataError(
                f"{data.name}: {len(data.x_train)} training examples, fewer than "
                f"Trainer.batch_size = {self.batch_size}; lower the batch size"
            )
        self.data = data
        self.strategy = distribute.get_strategy()
        self.distribution = distribute.distribution()[0]
        replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(
                f"Trainer.batch_size must be a multiple of the {replicas} replicas of "
                f"distribution.strategy = {self.distribution!r} (each takes an "
                f"equal slice of the global batch), got {self.batch_size}"
            )
        # Model and optimizer variables are mirrored on every replica; everything else
        # (controller, moving averages, guard, input position) lives once, outside the
        # scope, and runs in the cross-replica context.
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            self.model = self.model_fn(data.input_shape, data.num_classes)
            self.variables = list(self.model.trainable_variables)
            self.optimizer = make_optimizer(self.optimizer_spec, self.controller.initial_lr)
            self.optimizer.build(self.variables)
        self.controller.check_optimizer(self.optimizer)
        self.variable_names = _variable_names(self.variables, self.model.name)
        self.controller.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.first_nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")
        self.consecutive_nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")

        options = tf.data.Options()
        # Autotune can stall a short run's iterator teardown by seconds.
        options.autotune.enabled = False
        options.deterministic = True
        self.sampler = BatchSampler(data.x_train, data.y_train, self.batch_size, self.seed)
        self.eval_dataset = (
            tf.data.Dataset.from_tensor_slices((data.x_eval, data.y_eval))
            .batch(1024)
            .with_options(options)
        )

        # Summary groups by cadence: those due every batch are part of every step; the
        # others are written by the first batch of a compiled call (see `run_steps`).
        cadences = {"grad_norms": self.grad_norm_every, "histograms": self.histogram_every}
        self.every_step_groups = frozenset(g for g, every in cadences.items() if every == 1)
        self.periodic = {g: every for g, every in cadences.items() if every > 1}
        self.loops: dict[frozenset[str], Any] = {}
        self.train_loop = self.loop_for(frozenset())
        self.evaluate = tf.function(self._evaluate)
        self.next_step = 0  # Python mirror of `self.step`, so the loop never reads it
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            controller=self.controller,
            loss_ma_short=self.ma_short,
            loss_ma_long=self.ma_long,
            step=self.step,
            input_epoch=self.sampler.epoch,
            input_position=self.sampler.position,
            guard_skipped=self.skipped,
            guard_consecutive=self.consecutive_nonfinite,
            guard_lr_scale=self.lr_scale,
            guard_first_nonfinite_step=self.first_nonfinite_step,
        )
        self.built = True

    # -- compiled code ----------------------------------------------------------------
    def train_step(
        self, x: tf.Tensor, y: tf.Tensor, periodic: frozenset[str] = frozenset()
    ) -> tf.Tensor:
        """One batch: returns its mean loss. Pure TF; called inside a compiled loop.

        `periodic` names the periodic summary groups ("grad_norms", "histograms") this
        batch writes; the Python loop decides, so no batch carries a `tf.cond` for them.
        """
        step = self.step.read_value()
        if self.strategy is None:
            loss, grads = self._loss_and_grads(x, y)
        else:
            # Each replica takes its slice of the global batch; the all-reduced loss and
            # gradients are identical on every replica, so replica 0's copy is the one.
            per_replica = self.strategy.run(self._loss_and_grads, (x, y))
            loss, grads = first_replica(self.strategy, per_replica)
        lr_variable = self.optimizer.learning_rate
        signals = batch_signals(
            step, loss, grads, self.variables, self.ma_short, self.ma_long, lr_variable
        )
        grads, norm = list(signals.grads), signals.global_norm
        lr, accepted, out = set_lr(self.controller, signals, lr_variable, self.lr_scale)
        if self.clip_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))

        def apply() -> tf.Tensor:
            self.optimizer.apply(grads, self.variables)
            return tf.constant(True)

        # A NaN/Inf batch is skipped: no update, later LRs scaled down.
        tf.cond(finite, apply, lambda: tf.constant(False))
        bad = tf.cast(~finite, tf.int64)
        self.skipped.assign_add(bad)
        self.consecutive_nonfinite.assign((self.consecutive_nonfinite + bad) * bad)
        self.lr_scale.assign(
            tf.where(finite, self.lr_scale, self.lr_scale * self.nonfinite_lr_factor)
        )
        first_bad = self.first_nonfinite_step
        first_bad.assign(tf.where(tf.logical_and(~finite, first_bad < 0), step, first_bad))
        write_batch_summaries(
            signals,
            lr,
            out,
            {
                "guard/lr_rejected": 1.0 - tf.cast(accepted, tf.float32),
                "guard/skipped": self.skipped,
            },
        )
        with tf.name_scope("summaries"):
            self._periodic_summaries(step, grads, periodic | self.every_step_groups)
        self.step.assign_add(1)
        return loss

    def _loss_and_grads(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """The global batch's mean loss and its gradients.

        Under a strategy this runs in each replica: the replica computes its slice's
        loss divided by the replica count, and one batched all-reduce (SUM) of loss and
        gradients gives every replica the global-batch values, so the signals, and hence
        the LR, are the same everywhere and equal to a single-device step's.
        """
        replicas = 1
        if self.strategy is not None:
            context = tf.distribute.get_replica_context()
            replicas = context.num_replicas_in_sync
            per_replica = self.batch_size // replicas
            start = tf.cast(context.replica_id_in_sync_group, tf.int32) * per_replica
            x = x[start : start + per_replica]
            y = y[start : start + per_replica]
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            # The mean of the per-example losses, spelled out: Keras's `Loss` objects
            # divide by the replica count under a strategy, which is done below.
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            )
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
            if replicas > 1:
                loss /= replicas
        grads = tape.gradient(loss, self.variables)
        if self.strategy is None:
            return loss, grads
        return all_reduce_sum(loss, grads, self.variables)

    def _periodic_summaries(
        self, step: tf.Tensor, grads: list[tf.Tensor], groups: frozenset[str]
    ) -> None:
        if "grad_norms" in groups:
            for name, g in zip(self.variable_names, grads, strict=True):
                summaries.scalar(f"grad/norm/{name}", tf.norm(tf.cast(g, tf.float32)), step)
        if "histograms" in groups:
            for name, g, v in zip(self.variable_names, grads, self.variables, strict=True):
                summaries.histogram(f"grad/{name}", g, step)
                summaries.histogram(f"weights/{name}", v.value, step)

    def loop_for(self, periodic: frozenset[str]) -> Any:
        """The compiled loop whose first batch writes the `periodic` summary groups.

        `loop(num_steps)` trains `num_steps` (int64 scalar tensor, >= 1) batches and
        returns the last batch's loss. One `tf.function` per group set (at most four),
        each traced once. Periodic summaries are not a `tf.cond` in every batch: a
        dozen conds (lowered to Switch/Merge inside the loop) cost ~85 us per batch
        on CPU even when nothing was written.
        """
        periodic = periodic - self.every_step_groups
        if periodic not in self.loops:

            def loop(num_steps: tf.Tensor) -> tf.Tensor:
                x, y = self.sampler.next()
                loss = self.train_step(x, y, periodic)
                for _ in tf.range(num_steps - 1):
                    x, y = self.sampler.next()
                    loss = self.train_step(x, y)
                return loss

            self.loops[periodic] = tf.function(loop)
        return self.loops[periodic]

    def run_steps(self, num_steps: int, max_per_call: int | None = None) -> tf.Tensor:
        """Trains `num_steps` batches from the current step (Python loop, no host read).

        Calls compiled loops of at most `max_per_call` batches (default
        `steps_per_loop`), split so every periodic summary lands on its cadence.
        Returns the last batch's loss (a tensor: reading it waits for the device).
        """
        limit = max_per_call or self.steps_per_loop
        loss = tf.constant(float("nan"))
        done = 0
        while done < num_steps:
            step = self.next_step
            due = frozenset(g for g, every in self.periodic.items() if step % every == 0)
            upcoming = [(step // every + 1) * every for every in self.periodic.values()]
            n = min([limit, num_steps - done] + [u - step for u in upcoming])
            loss = self.loop_for(due)(tf.constant(n, tf.int64))
            done += n
            self.next_step += n
        return loss

    def _evaluate(self) -> tuple[tf.Tensor, tf.Tensor]:
        total_loss = tf.constant(0.0, tf.float64)
        correct = tf.constant(0, tf.int64)
        count = tf.constant(0, tf.int64)
        for x, y in self.eval_dataset:
            logits = self.model(x, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            total_loss += tf.reduce_sum(tf.cast(per_example, tf.float64))
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            correct += tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y, tf.int32)), tf.int64))
            count += tf.cast(tf.shape(y)[0], tf.int64)
        n = tf.cast(count, tf.float64)
        return tf.cast(total_loss / n, tf.float32), tf.cast(
            tf.cast(correct, tf.float64) / n, tf.float32
        )

    # -- the loop around it -------------------------------------------------------------
    def fit(
        self,
        logdir: str = "runs",
        run_name: str | None = None,
        quiet: bool = False,
        operative_config: Callable[[], str] = gin.operative_config_str,
        resume: bool = False,
    ) -> TrainResult:
        """Trains `steps` batches into a new run directory under `logdir`.

        Writes event files, `config.gin` (the operative gin config) and `checkpoints/`,
        holding the run directory's lock (`rundir.RunLock`) throughout. Raises
        `RunDirExistsError` rather than touching an existing run (`RunInUseError` if
        another process writes it), `NonFiniteLossError` (after flushing summaries) if
        the loss stays NaN/Inf, and `DiskFullError` if the disk fills up (the run stays
        resumable). With `resume`, continues `<logdir>/<run_name>` from its newest
        intact checkpoint (model, optimizer, controller, moving averages, step, input
        position), first cutting from its event files whatever the interrupted process
        logged after that checkpoint; a run with no checkpoint starts again from step 0,
        and a run that does not exist is started.
        """
        self.build()
        prefix = type(self.controller).__name__.removesuffix("Controller") or "run"
        say = _silent if quiet else (lambda *a: print(*a, flush=True))
        config = operative_config()
        # Under MultiWorkerMirroredStrategy every worker runs this; only the chief owns
        # the run directory. The others write no summaries, and save their identical
        # checkpoints (TF asks every worker to take part in a save) to a temporary
        # folder deleted right after.
        chief = distribute.is_chief(self.strategy)
        worker = distribute.worker_name(self.strategy)
        if worker and run_name is None:
            raise ValueError(
                "a multi-worker run needs --run_name, so that every worker agrees on the "
                "run directory (tools/launch_local_workers.py passes one)"
            )
        if resume and run_name is None:
            raise ValueError("resume needs the run's name (--run_name)")
        lock = None
        if chief:
            try:
                run_dir = make_run_dir(logdir, run_name, prefix)
            except RunDirExistsError:
                if not resume:
                    raise
                run_dir = run_path(logdir, run_name)
            lock = RunLock(run_dir).acquire()
        else:
            run_dir = run_path(logdir, run_name)
        try:
            resumed_from = self._resume(run_dir, config, say, chief) if resume else None
            if resumed_from is None and chief:
                write_atomically(os.path.join(run_dir, "config.gin"), config)
            return self._train(run_dir, resumed_from, config, say, chief, worker)
        except (tf.errors.OpError, OSError) as e:
            if not is_disk_full(e):
                raise
            raise DiskFullError(disk_full_message(run_dir, e)) from None
        finally:
            if lock is not None:
                lock.release()

    def _train(
        self,
        run_dir: str,
        resumed_from: int | None,
        config: str,
        say: Callable[..., None],
        chief: bool,
        worker: str | None,
    ) -> TrainResult:
        """The outer loop: compiled calls, eval, checkpoints, progress, Ctrl-C."""
        self.run_dir = run_dir
        say(
            f"run directory: {run_dir}"
            + (f" (resumed at step {resumed_from})" if resumed_from is not None else "")
            + (f" ({worker}: no summaries; checkpoints written and deleted)" if not chief else "")
        )
        if chief:
            manager = tf.train.CheckpointManager(
                self.checkpoint,
                os.path.join(run_dir, "checkpoints"),
                max_to_keep=self.keep_checkpoints,
            )

            def save(number: int) -> None:
                manager.save(checkpoint_number=number)

        else:

            def save(number: int) -> None:
                # Every worker takes part in a save; a non-chief's copy is not needed.
                with tempfile.TemporaryDirectory(prefix=f"lrresearch-{worker}-") as folder:
                    tf.train.CheckpointManager(self.checkpoint, folder, 1).save(number)

        writer = summaries.create_writer(run_dir) if chief else tf.summary.create_noop_writer()
        # A compiled loop captures the default summary writer when it is traced: each run
        # (each writer) needs fresh traces, or a second fit() writes to a closed writer.
        self.loops = {}
        self.train_loop = self.loop_for(frozenset())
        cadences = [c for c in (self.eval_every, self.log_every, self.checkpoint_every) if c]
        eval_loss = eval_acc = float("nan")
        loss = tf.constant(float("nan"))
        start = time.perf_counter()
        first_done, first_seconds = 0, float("nan")
        done = self.next_step = resumed_from or 0
        side_seconds = 0.0  # eval and checkpoints, not training
        # Ctrl-C / SIGTERM stop the run between compiled calls (every worker at the
        # same step), never inside TensorFlow's Python code.
        stop = distribute.StopOnSignal(self.strategy if worker else None)
        finished = False
        try:
            with writer.as_default(), stop:
                if chief and resumed_from is None:
                    summaries.text("config", summaries.config_markdown(config or "(defaults)"))
                    summaries.write_run_header(self.hparams(), os.path.basename(run_dir))
                elif chief:
                    summaries.mark_restart(writer, resumed_from)
                warned = self._warn(self.controller.run_warnings(self.steps), set(), chief)
                while done < self.steps:
                    boundary = min([self.steps] + [(done // c + 1) * c for c in cadences])
                    n = min(self.steps_per_loop, boundary - done)
                    loss = self.run_steps(n)
                    done += n
                    stop.check()
                    if not first_done:
                        first_done, first_seconds = done, time.perf_counter() - start
                    last = done == self.steps
                    side_start = time.perf_counter()
                    if last or (self.eval_every and done % self.eval_every == 0):
                        eval_loss, eval_acc = (float(v) for v in self.evaluate())
                        summaries.scalar("eval/loss", eval_loss, done - 1)
                        summaries.scalar("eval/accuracy", eval_acc, done - 1)
                    if self.checkpoint_every and done % self.checkpoint_every == 0 and not last:
                        # Everything logged up to a checkpoint is on disk before it, so a
                        # resumed run has every step (later ones are dropped on resume).
                        writer.flush()
                        save(done)
                    side_seconds += time.perf_counter() - side_start
                    if last or done % self.log_every == 0:
                        warned = self._warn(self.controller.state_warnings(), warned, chief)
                        message = self._nonfinite_message()
                        if message:
                            writer.flush()
                            save(done)
                            raise NonFiniteLossError(message)
                        rate = self._rate(
                            start + side_seconds, first_done, first_seconds, done, resumed_from or 0
                        )
                        acc = "-" if math.isnan(eval_acc) else f"{eval_acc:.3f}"
                        say(
                            f"step {done:>{len(str(self.steps))}}/{self.steps}  "
                            f"loss {float(loss):.4f}  lr {self.current_lr():.4g}  "
                            f"eval/acc {acc}  {rate:,.0f} steps/s  "
                            f"ETA {(self.steps - done) / rate:.0f}s"
                        )
            save(done)
            finished = True
        except KeyboardInterrupt:
            # `StopRequested` comes between compiled calls, where the step variable matches
            # the weights (a second Ctrl-C, a plain KeyboardInterrupt, may come anywhere).
            at = int(self.step.numpy())
            writer.flush()
            save(at)
            raise TrainingInterrupted(
                f"interrupted at step {at}: checkpoint saved and summaries flushed in "
                f"{run_dir}; continue with --resume --run_name "
                f"{os.path.basename(run_dir)}"
            ) from None
        finally:
            # When something already failed (a full disk, say), a failing flush must not
            # hide it; after a clean finish, a failing flush is the error.
            with contextlib.nullcontext() if finished else contextlib.suppress(tf.errors.OpError):
                writer.flush()
                writer.close()
        return TrainResult(
            run_dir,
            done,
            time.perf_counter() - start,
            self._rate(start + side_seconds, first_done, first_seconds, done, resumed_from or 0),
            float(loss),
            self.current_lr(),
            eval_loss,
            eval_acc,
            first_seconds,
            resumed_from or 0,
        )

    @staticmethod
    def _rate(
        start: float, first_done: int, first_seconds: float, done: int, began: int = 0
    ) -> float:
        """Training steps per second after the first call (which includes tracing), or
        overall if there was only one call; `start` is shifted by the eval and
        checkpoint time, so only training counts. `began` is the step this process
        started at (non-zero after a resume)."""
        elapsed = time.perf_counter() - start
        if done > first_done and elapsed > first_seconds:
            return (done - first_done) / (elapsed - first_seconds)
        return max(done - began, 1) / elapsed

    def _resume(
        self, run_dir: str, config: str, say: Callable[..., None], chief: bool
    ) -> int | None:
        """Restores `run_dir`'s newest intact checkpoint; returns its step, or None when
        the run starts (again) from step 0. The chief also repairs the run directory:
        interrupted saves and damaged checkpoints are set aside, and the event files
        lose what the interrupted process logged after the checkpoint."""
        say = say if chief else _silent
        saved_path = os.path.join(run_dir, "config.gin")
        saved = read_text(saved_path)
        others = set(os.listdir(run_dir)) - {LOCK_FILE, "checkpoints"}
        if saved is None and others:
            raise ResumeError(
                f"cannot resume {run_dir!r}: it is not an lrresearch run (no config.gin, "
                f"but {len(others)} other entries); pick the run's own --run_name and "
                "--logdir"
            )
        recovery = recover_checkpoint(os.path.join(run_dir, "checkpoints"), repair=chief)
        for note in recovery.notes:
            say(f"resume: {note}")
        if recovery.path is not None:
            self._restore(recovery.path, run_dir, saved, config)
        step = recovery.step
        if chief:
            trimmed = event_files.drop_steps_from(run_dir, step)
            for damage in trimmed.damage:
                say(f"resume: cut a damaged event file: {damage}")
            if trimmed.dropped_events and recovery.path is not None:
                say(
                    f"resume: dropped {trimmed.dropped_events} events logged after step "
                    f"{step} by the interrupted process"
                )
        if recovery.path is None:
            if saved is not None:
                say(
                    f"resume: {run_dir} has no checkpoint (it stopped before its first): "
                    "starting it from step 0"
                )
            return None
        differences = binding_differences(saved or "", config) if saved is not None else []
        if differences:
            say(
                "warning: resuming with bindings that differ from the run's config.gin:\n  "
                + "\n  ".join(differences)
            )
        return step

    def _restore(self, path: str, run_dir: str, saved: str | None, config: str) -> None:
        """Restores the checkpoint at `path`; a checkpoint that does not fit this
        configuration is a `ResumeError` naming the bindings that differ."""
        status = None
        try:
            status = self.checkpoint.restore(path)
            # Every saved value must find its variable and the reverse: a checkpoint of
            # another controller (whose variables this one lacks) does not fit either.
            status.assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            if status is not None:
                status.expect_partial()  # no second report at exit; this one says it
            else:  # `restore` itself raised: its half-done restore reports at exit
                tf.get_logger().addFilter(_unrestored_values_filter)
            lines = (str(e).strip() or type(e).__name__).splitlines()
            reason = lines[0][:200] + (" ..." if len(lines) > 1 or len(lines[0]) > 200 else "")
            differences = binding_differences(saved, config) if saved is not None else []
            name, logdir = os.path.basename(run_dir), os.path.dirname(run_dir) or "."
            raise ResumeError(
                f"cannot resume {run_dir!r} from {os.path.basename(path)}: the checkpoint "
                f"does not fit this configuration ({type(e).__name__}: {reason})\n"
                + (
                    "bindings that differ from the run's config.gin (run -> now):\n  "
                    + "\n  ".join(differences)
                    + "\nresume with the run's own configuration: lrresearch train "
                    f"--gin_file={os.path.join(run_dir, 'config.gin')} --resume "
                    f"--run_name {name} --logdir {logdir}"
                    if differences
                    else "no binding differs from the run's config.gin, so the checkpoint "
                    "was written by code that kept other state (another version of "
                    "lrresearch, or of your model or controller); resume it with that code"
                )
            ) from None
        self.sampler.restore_order()

    def hparams(self) -> dict[str, bool | int | float | str]:
        """The run's hyperparameters for TensorBoard's HParams dashboard: the controller
        and its numeric/string settings, optimizer, batch size, seed, steps, model and
        data."""
        optimizer = self.optimizer_spec
        values: dict[str, bool | int | float | str] = {
            "controller": type(self.controller).__name__,
            "optimizer": optimizer
            if isinstance(optimizer, str)
            else getattr(optimizer, "__name__", type(optimizer).__name__),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "steps": self.steps,
            "steps_per_loop": self.steps_per_loop,
            "model": self.model.name,
            "dataset": self.data.name,
            "distribution": self.distribution,
            "replicas": 1 if self.strategy is None else self.strategy.num_replicas_in_sync,
        }
        for key, value in sorted(vars(self.controller).items()):
            if not key.startswith("_") and isinstance(value, (bool, int, float, str)):
                values[f"controller.{key}"] = value
        return values

    def current_lr(self) -> float:
        """The LR applied to the latest batch (a host read: call between loops only)."""
        return float(np.asarray(self.optimizer.learning_rate))

    @staticmethod
    def _warn(messages: list[str], shown: set[str], chief: bool) -> set[str]:
        """Prints each of the controller's warnings once (to stderr, even with --quiet:
        a rule that does nothing for the run is news); returns those shown so far."""
        for message in messages:
            if chief and message not in shown:
                print(f"warning: {message}", file=sys.stderr, flush=True)
        return shown | set(messages)

    def _nonfinite_message(self) -> str | None:
        """Why the run must stop (too many NaN/Inf batches in a row), or None."""
        consecutive = int(self.consecutive_nonfinite.numpy())
        if consecutive == 0 or consecutive < self.max_consecutive_nonfinite:
            return None
        bad = int(self.first_nonfinite_step.numpy())
        return (
            f"the loss or gradient norm became NaN/Inf at step {bad}; {consecutive} "
            f"batches in a row were NaN/Inf and skipped ({int(self.skipped.numpy())} "
            f"in all), so the run stopped. The weights of the last good batch are in "
            f"{os.path.join(self.run_dir, 'checkpoints')} and the summaries up to here in "
            f"{self.run_dir}. Lower the LR (e.g. the controller's max_lr/base_lr), set "
            "Trainer.clip_norm, or check the data for NaN/Inf."
        )
