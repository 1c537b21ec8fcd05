"""The trainer: one compiled step per batch, `steps_per_loop` batches per call.

Per batch, inside one `tf.function`: input, forward, the mean loss, gradients, signals
(global norm, loss moving averages), controller -> LR, guard, `learning_rate.assign`,
apply, summaries. The `Trainer` owns the step, the inner loop (`InnerLoop`, in
`inner_loop`) and evaluation; the run around it (run directory, checkpoints, resume,
progress, Ctrl-C) is `lrresearch.training.outer_loop`, as orbit separates its
`StandardTrainer` from its `Controller`. Both ask `self.cadences` (`Cadences`) where
calls stop. The workload (model, loss, metrics) is `lrresearch.workloads.model_loss`, the input
`lrresearch.workloads.inputs`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
import keras
import numpy as np
import tensorflow as tf

from lrresearch.controllers import Controller, evaluation
from lrresearch.controllers.signals import MovingAverage
from lrresearch.logs.rows import BlockWriter
from lrresearch.optimizers import make_optimizer, whole_step
from lrresearch.step import averaging, precision, random_state
from lrresearch.step.batch import (
    OptimizerHyperparameters,
    all_reduce_sum,
    batch_row,
    batch_signals,
    first_replica,
    set_lr,
)
from lrresearch.step.guard import NonFiniteGuard
from lrresearch.step.precision import LossScale
from lrresearch.training import compiled_loop, distribute
from lrresearch.training import outer_loop as run
from lrresearch.training.arguments import RunFacts
from lrresearch.training.arguments import hparams as _hparams
from lrresearch.training.arguments import run_controller as _run_controller
from lrresearch.training.arguments import validate as _validate
from lrresearch.training.arguments import variable_names as _variable_names
from lrresearch.training.cadences import Cadences
from lrresearch.training.inner_loop import InnerLoop
from lrresearch.training.outer_loop import TrainResult
from lrresearch.workloads import model_loss as workload
from lrresearch.workloads.data import Dataset, digits
from lrresearch.workloads.inputs import make_inputs
from lrresearch.workloads.models import mlp


# `strategy` is passed by every caller (`distribution.strategy` picks it), never bound.
@gin.configurable(denylist=["strategy"])
class Trainer(InnerLoop):
    """Trains a Keras model with a per-batch LR controller, logging every batch.

    Args:
      steps: number of batches to train (>= 1).
      controller: the per-batch LR strategy (default `GradNormController()`).
      optimizer: "sgd", "momentum", "nesterov", "adam", "adamw", or an optimizer class
        such as `@keras.optimizers.Adam` or `@MomentumSGD` (configure it with its own
        gin bindings).
      batch_size: examples per (global) batch; the last partial batch of an epoch is
        dropped, so every batch has the same shape and the step is traced once.
      seed: seeds weights, shuffling and synthetic data.
      steps_per_loop: batches per compiled call, at most (a call also stops at the run's
        end and each cadence: `compiled_loop.call_capacity`); the LR changes every batch.
      jit_compile: compile the training loop with XLA (`lrresearch.training.compiled_loop`): the
        whole loop with in-memory data, each batch's step with `tf.data` input. Not
        with a strategy. Off by default, by measurement on CPU (docs/benchmarks/
        logging.md): ~2x the steps/s on the small MLP, but ~2 s more compiling on the
        first call, and half the speed on the MNIST-1D CNN (XLA's CPU convolutions).
      histogram_every: batches between `grad/` and `weights/` histograms (0 = off).
      grad_norm_every: batches between per-variable `grad/norm/` scalars (0 = off,
        1 = every batch; default: same as `histogram_every`).
      eval_every: batches between evaluations (0 = only at the end).
      dataset: a function returning the input (see `lrresearch.workloads.inputs`): in-memory
        arrays (`@digits`, `@synthetic`, `@npz_file`, `@mnist1d`), a
        `tf.data.Dataset` of unbatched `(x, y)` examples, or a pair `(train, eval)` of
        them (`@stdlib_bytes`).
      model: a function returning a `keras.Model`, called with the arguments it takes
        among `input_shape` and `num_classes` (`@mlp`, `@cnn`, or your own).
      loss: a Keras loss (name, class or instance) or a function `(y_true, y_pred) ->
        per-example loss`; default: sparse categorical cross-entropy from logits. The
        batch loss is the mean over every element, plus `model.losses`.
      metrics: Keras metrics (names, classes, instances, functions) logged as
        `eval/<name>`; default: `['accuracy']` with the default loss, else none.
      clip_norm: if set, clip gradients to this global norm after the signals are
        computed (`grad/global_norm` is always the unclipped norm).
      loss_ma_short: window of `loss/ma_short` in batches.
      loss_ma_long: window of `loss/ma_long` in batches.
      loss_ma_kind: "window" (plain mean of the last N) or "ema" (see `MovingAverage`).
      checkpoint_every: batches between checkpoints (0 = only at the end).
      keep_checkpoints: how many checkpoints to keep.
      log_every: batches between progress lines (default: about 10 lines per run).
      mixed_precision: "off" (None), "mixed_bfloat16", or "mixed_float16" (with dynamic
        loss scaling); see `lrresearch.step.precision`. The controllers always see the
        unscaled float32 loss and gradient norm.
      deterministic: enable TF's op determinism (`enable_op_determinism`), so a run
        resumed from a checkpoint reproduces an uninterrupted one exactly.
      max_consecutive_nonfinite: a batch whose loss or gradient norm is NaN/Inf is
        skipped (no update; logged in `guard/skipped`); after this many in a row the
        run stops with a checkpoint of the last good state (0: stop at the first).
      nonfinite_lr_factor: every skipped batch multiplies all later LRs by this.
      polynomial_averaging: gamma (>= 0; DoG's authors use 8) of a weight average that
        evaluation and checkpoints use (`lrresearch.step.averaging`); None: none.
      weight_averaging: the weight average that evaluation and checkpoints use:
        "polynomial" (gamma from `polynomial_averaging`, which alone also means it),
        "ema" (`EMA.decay`, `EMA.warmup`: Keras's `use_ema`, optax's `ema`, TF's
        `ExponentialMovingAverage`; see `lrresearch.step.averaging`) or None.
      strategy: the `tf.distribute` strategy (not a gin binding: the CLI passes the
        one `distribution.strategy` configures); None trains on one device.
    """

    def __init__(
        self,
        steps: int = 2000,
        controller: Controller | None = None,
        optimizer: str | Callable[..., keras.optimizers.Optimizer] = "sgd",
        batch_size: int = 64,
        seed: int = 0,
        steps_per_loop: int = 100,
        jit_compile: bool = False,
        histogram_every: int = 100,
        grad_norm_every: int | None = None,
        eval_every: int = 500,
        dataset: Any = digits,
        model: Callable[..., keras.Model] = mlp,
        loss: workload.LossSpec = None,
        metrics: Sequence[workload.MetricSpec] | None = None,
        clip_norm: float | None = None,
        loss_ma_short: int = 10,
        loss_ma_long: int = 100,
        loss_ma_kind: str = "window",
        checkpoint_every: int = 500,
        keep_checkpoints: int = 3,
        log_every: int | None = None,
        mixed_precision: str | None = None,
        deterministic: bool = False,
        max_consecutive_nonfinite: int = 10,
        nonfinite_lr_factor: float = 0.5,
        polynomial_averaging: float | None = None,
        weight_averaging: str | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        _validate(locals())
        controller, self.run_length_bindings = _run_controller(controller, steps)
        self.steps, self.controller, self.optimizer_spec = steps, controller, optimizer
        self.batch_size, self.seed, self.steps_per_loop = batch_size, seed, steps_per_loop
        self.jit_compile, self.polynomial_averaging = jit_compile, polynomial_averaging
        self.weight_averaging = weight_averaging
        # When calls stop and what is due after them (`outer_loop` asks it too).
        self.cadences = Cadences.resolve(
            steps, steps_per_loop, eval_every, checkpoint_every, histogram_every,
            grad_norm_every, log_every,
        )  # fmt: skip
        self.dataset_spec, self.model_fn = dataset, model
        self.loss_fn, self.loss_name = workload.per_example_loss(loss)
        self.metrics = workload.make_metrics(metrics, default_loss=loss is None)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.keep_checkpoints = keep_checkpoints
        self.ma_short = MovingAverage(loss_ma_short, loss_ma_kind, name="loss_ma_short")
        self.ma_long = MovingAverage(loss_ma_long, loss_ma_kind, name="loss_ma_long")
        self.deterministic = bool(deterministic)
        self.mixed_precision = precision.check_policy(mixed_precision)
        self.loss_scale = LossScale() if self.mixed_precision == "mixed_float16" else None
        self.guard = NonFiniteGuard(max_consecutive_nonfinite, nonfinite_lr_factor, owner="Trainer")
        self.strategy = strategy
        self.distribution = distribute.describe(strategy)
        # More HParams for the run's header (a sweep adds the bindings it varies).
        self.extra_hparams: dict[str, bool | int | float | str] = {}
        self.log_to: BlockWriter | None = None  # where run_steps logs (`InnerLoop`)
        self.built = False

    def build(self) -> None:
        """Creates input, model, optimizer and the compiled functions (idempotent)."""
        if self.built:
            return
        keras.utils.set_random_seed(self.seed)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(
                f"Trainer.batch_size must be a multiple of the {replicas} replicas of "
                f"distribution.strategy = {self.distribution!r} (each takes an "
                f"equal slice of the global batch), got {self.batch_size}"
            )
        # Input, controller, moving averages, guard and step: once, outside the strategy's
        # scope, in the cross-replica context; model and optimizer: mirrored per replica.
        self.inputs = make_inputs(self.dataset_spec, self.batch_size, self.seed)
        self.data: Dataset | None = self.inputs.arrays  # in-memory arrays, if that
        self.eval_dataset = self.inputs.eval
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            with precision.policy(self.mixed_precision):
                self.model = workload.build_model(
                    self.model_fn, self.inputs.input_shape, self.inputs.num_classes
                )
                workload.check_output_fits(self.model, self.loss_fn, self.loss_name, self.inputs)
            self.variables = list(self.model.trainable_variables)
            self.optimizer = make_optimizer(self.optimizer_spec, self.controller.initial_lr)
            self.optimizer.build(self.variables)
            self.averager = averaging.make(
                self.weight_averaging, self.polynomial_averaging, self.model.variables
            )
        self.controller.check_optimizer(self.optimizer)
        # A rule that watches eval/<name>: logged by this run? (an error names it if not)
        evals = None if self.eval_dataset is None else evaluation.directions(self.metrics)
        every = self.cadences.eval_every
        before_end = (self.steps - 1) // every if every else 0
        evaluation.bind(self.controller, evals or {}, evaluations=before_end)
        # Momentum / weight decay as variables, only if the controller sets them.
        self.hyperparameters = OptimizerHyperparameters(
            self.optimizer, self.controller.optimizer_hyperparameters
        )
        self.variable_names = _variable_names(self.variables, self.model.name)
        self.controller.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.call_capacity = compiled_loop.call_capacity(self)
        self.reset_loops()
        # TF counts retraces per code object, so the evaluations of several trainers in
        # one process (a sweep) added up to a false "retracing" warning; a partial has no
        # code object, and TF counts it by itself: one count per trainer.
        self.evaluate = tf.function(functools.partial(self._evaluate))
        self.next_step = 0  # `InnerLoop.next_step`: the loop never reads `self.step`
        # Root names as in checkpoints written before these parts had modules of their
        # own, so those checkpoints keep restoring.
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            controller=self.controller,
            loss_ma_short=self.ma_short,
            loss_ma_long=self.ma_long,
            step=self.step,
            **self.inputs.train.checkpoint_items(),
            **self.guard.checkpoint_items(),
            **({"loss_scale": self.loss_scale} if self.loss_scale else {}),
            **({"averaging": self.averager} if self.averager else {}),
            **random_state.checkpoint_items(self.model, self.loss_fn, self.metrics),
        )
        self.built = True

    def evaluation(self) -> dict[str, float] | None:
        """The held-out loss and metrics, `{"loss": ..., "<metric>": ...}` (a host read:
        between calls only); None when the input has no eval split."""
        if self.eval_dataset is None:
            return None
        return {name: float(value) for name, value in self.evaluate().items()}

    def _evaluate(self) -> dict[str, tf.Tensor]:
        """Loss and metrics over the held-out split, on the evaluation weights."""
        with self.eval_weights():
            return workload.evaluate(self.model, self.loss_fn, self.metrics, self.eval_dataset)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """A context in which the model holds the weights to evaluate and save: the
        polynomial average if on, Schedule-Free's x, else the trained weights; checkpoints
        are written in it. Training goes on from exactly the weights before it."""
        average = self.averager.eval_weights() if self.averager else contextlib.nullcontext()
        with whole_step.eval_weights(self.optimizer, self.variables), average:
            yield

    def after_restore(self) -> None:
        """Called once a checkpoint has been restored into this trainer."""
        if self.averager:
            self.averager.to_train_weights()
        whole_step.to_train_weights(self.optimizer, self.variables)
        self.inputs.train.after_restore()
        self.next_step = int(self.step.numpy())

    def train_step(
        self,
        x: tf.Tensor,
        y: tf.Tensor,
        periodic: frozenset[str] = frozenset(),
        log: bool = False,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """One batch: returns `(mean loss, row, first)`. Pure TF; called inside a
        compiled loop, where no summary op runs (`lrresearch.logs.rows`).

        With `log`, `row` holds this batch's every-batch values (`{tag: value}`:
        the scalars, plus the groups due every batch) and `first` the `periodic` groups
        ("grad_norms", "histograms") the Python loop says are due on this batch, so no
        batch carries a `tf.cond` for them. Without `log` both are empty.
        """
        step = self.step.read_value()
        if self.strategy is None:
            loss, grads = self._loss_and_grads(x, y)
        else:
            # Each replica takes its slice of the global batch; the all-reduced loss and
            # gradients are identical on every replica, so replica 0's copy is the one.
            per_replica = self.strategy.run(self._loss_and_grads, (x, y))
            loss, grads = first_replica(self.strategy, per_replica)
        if self.loss_scale is not None:  # every signal is the unscaled value
            grads = precision.unscale(grads, self.loss_scale)
        lr_variable = self.optimizer.learning_rate
        signals = batch_signals(
            step, loss, grads, self.variables, self.ma_short, self.ma_long, lr_variable
        )
        grads, norm = list(signals.grads), signals.global_norm
        lr, accepted, out = set_lr(
            self.controller, signals, lr_variable, self.guard.lr_scale, self.hyperparameters
        )
        if self.clip_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        every_step = self.cadences.every_step_groups  # the others: `cadences.periodic`
        groups = (periodic | every_step) if log else frozenset()
        # `update/ratio/` needs the weights before the update: copied on this batch only.
        before = [tf.identity(v.value) for v in self.variables] if "grad_norms" in groups else []

        def apply() -> None:  # MoMo reads `loss` (the objective `grads` come from)
            whole_step.hand_batch_loss(self.optimizer, loss)
            self.optimizer.apply(grads, self.variables)

        # A NaN/Inf batch is skipped: no update (nor loss handed over), later LRs lower.
        scaling = precision.apply_guarded(self.guard, self.loss_scale, (step, loss, norm), apply)
        if self.averager:
            self.averager.update()
        row: dict[str, tf.Tensor] = {}
        first: dict[str, tf.Tensor] = {}
        if log:
            extra = {"guard/lr_rejected": 1.0 - tf.cast(accepted, tf.float32), **scaling}
            extra.update(self.hyperparameters.summaries())
            extra.update(whole_step.optimizer_summaries(self.optimizer))
            row = batch_row(signals, lr, out, {**extra, **self.guard.summaries()})
            with tf.name_scope("summaries"):
                names, variables = self.variable_names, self.variables
                values = compiled_loop.periodic_values
                row.update(values(names, variables, grads, every_step, before))
                first = values(names, variables, grads, periodic, before)
        self.step.assign_add(1)
        return loss, row, first

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
            x = tf.nest.map_structure(lambda t: t[start : start + per_replica], x)
            y = tf.nest.map_structure(lambda t: t[start : start + per_replica], y)
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)
            if y_pred.dtype.is_floating:  # the loss in float32 under mixed precision
                y_pred = tf.cast(y_pred, tf.float32)
            # The mean over every element, spelled out: Keras's `Loss` objects divide
            # by the replica count under a strategy, which is done below.
            loss = workload.mean_loss(self.loss_fn, y, y_pred)
            if self.model.losses:
                loss += tf.add_n([tf.cast(v, tf.float32) for v in self.model.losses])
            if replicas > 1:
                loss /= replicas
            scaled = loss if self.loss_scale is None else loss * self.loss_scale.scale
        grads = tape.gradient(scaled, self.variables)
        if self.strategy is None:
            return loss, grads
        return all_reduce_sum(loss, grads, self.variables)

    def fit(
        self,
        logdir: str = "runs",
        run_name: str | None = None,
        quiet: bool = False,
        operative_config: Callable[[], str] | None = None,
        resume: bool = False,
        on_eval: run.EvalCallback | None = None,
    ) -> TrainResult:
        """Trains `steps` batches into a run directory under `logdir` (`outer_loop`).

        Writes event files, `config.gin` (the operative gin config, default
        `gin.operative_config_str`) and `checkpoints/`, holding the run directory's lock
        throughout. Raises `RunDirExistsError` rather than touching an existing run
        (`RunInUseError` if another process writes it), `NonFiniteLossError` (after
        flushing summaries) if the loss stays NaN/Inf, and `DiskFullError` if the disk
        fills up (the run stays resumable). With `resume`, continues
        `<logdir>/<run_name>` from its newest intact checkpoint (model, optimizer,
        controller, moving averages, step, input position, random streams), first
        cutting from its event files what the interrupted process logged after it; a
        run with no checkpoint starts again from step 0, one that does not exist starts.
        `on_eval(batches_trained, evals)` is called after each evaluation (a host call
        at the eval cadence); it may raise `outer_loop.StopRun` to end the run there,
        saved as on Ctrl-C, and `fit` then raises `outer_loop.TrainingStopped`.
        """
        return run.fit(self, logdir, run_name, quiet, operative_config, resume, on_eval)

    def hparams(self) -> dict[str, bool | int | float | str]:
        """The run's HParams (`arguments.hparams`)."""
        replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        return _hparams(
            RunFacts(
                self.controller, self.optimizer_spec, self.batch_size, self.seed, self.steps,
                self.steps_per_loop, self.jit_compile, self.model.name, self.inputs.name,
                self.inputs.info, self.loss_name, self.distribution, replicas,
                self.extra_hparams,
            )
        )  # fmt: skip

    def current_lr(self) -> float:
        """The LR applied to the latest batch (a host read: call between loops only)."""
        return float(np.asarray(self.optimizer.learning_rate))
