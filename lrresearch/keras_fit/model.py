"""Per-batch LR control inside Keras `model.fit`, with no per-batch Python round trip.

`ControlledModel(model, controller)` wraps any Keras model: its `train_step` (traced
into Keras's own compiled train function, so `steps_per_execution` > 1 works) computes
the same `Signals` as the lrresearch trainer, asks the controller for the LR, assigns
it and applies the update; with the `PerBatchSummaries` callback the same tags (`lr`,
`loss/batch`, `loss/ma_short`, `loss/ma_long`, `grad/global_norm`, `controller/...`,
`guard/skipped`, `guard/lr_rejected`, and `precision/loss_scale`, `precision/overflow`
under float16 loss scaling) appear in TensorBoard, at step = the batch index (see
"Non-finite batches").

Per-batch logging runs no summary op inside the compiled train function, as in the
trainer (`lrresearch.logs.rows`): each batch's row (`step.batch_row`) and step go into
a ring buffer of `steps_per_execution` rows on the device (variables created when the
train function is traced, never saved nor in `model.weights`), and after each compiled
call `PerBatchSummaries` gathers the new rows, in order, into one block that a
`BlockWriter` writes on a background thread. Rows are buffered when the train function
is traced during a `fit` with `PerBatchSummaries`; Keras keeps that function, so the
batches of a later `fit` without the callback are buffered too and written by the
callback's next `fit`, at most `steps_per_execution` of them (it warns about the rest).
A step traced without the callback (`train_on_batch` traces its own) writes summary
ops into the default summary writer if the caller set one, as before, else nothing.

Non-finite batches: the trainer's `NonFiniteGuard` (`lrresearch/step/guard.py`) skips the
update of a batch whose loss or gradient norm is NaN/Inf (no `optimizer.apply`, so the
weights, the optimizer's slots and `optimizer.iterations` stay those of the last good
batch, as Keras's own `LossScaleOptimizer` does) and multiplies every later LR by
`nonfinite_lr_factor`. `optimizer.iterations` therefore counts applied updates, and the
batch index (the controller's `step` and the summary step) is `optimizer.iterations +
guard.skipped`: equal to the iteration count until a batch is skipped, and like the
trainer's step it advances on every batch. After `max_consecutive_nonfinite` skipped
batches in a row, `fit` stops (`stop_training`) with a `RuntimeWarning` that says where it
began; the check reads one scalar after each compiled call (every `steps_per_execution`
batches), never inside one. `fit`'s loss is Keras's: the running mean over every batch,
skipped ones included, so an epoch with a NaN batch loss reports NaN (and Keras's
`TerminateOnNaN` would stop there, before the guard's count).

Mixed precision, as the trainer's (`lrresearch.step.precision`): under the "mixed_float16"
policy Keras's `compile` wraps the optimizer in a `LossScaleOptimizer`; `compile` here
unwraps it (`model.optimizer` is the optimizer it wrapped) into a `CountingLossScale` at
its scale and growth steps, saved with the controller's state. The loss is scaled
before the gradients are taken and the gradients unscaled right after, so the signals
and `grad/global_norm` are the unscaled values; a batch whose scaled gradients overflow
is skipped by the loss scale (which halves), not counted by the guard, and counts in the
batch index (`+ loss_scale.overflows`). "mixed_bfloat16" needs no loss scaling.

Saving: every Keras saving path carries the controller's, the moving averages', the
guard's state and the random streams (`lrresearch.step.random_state`: Dropout's and other
random layers' generators, which Keras does not save) next to the weights and the
optimizer (iterations, LR): `save_weights` /
`load_weights` (`.weights.h5`), `model.save` / `keras.models.load_model` (`.keras`,
which also records the controller's constructor arguments, so `load_model` rebuilds
it and the guard's arguments), `ModelCheckpoint` in both modes, and
`tf.train.Checkpoint(model=...)`. Training resumed from a `.weights.h5` or `.keras` save
gives the LR sequence of the uninterrupted run. A file saved before the guard existed has
no guard state; it loads with the guard reset (nothing was skipped by that code).

Under a `tf.distribute` strategy (build and compile the model in `strategy.scope()`),
the signals come from the all-reduced loss and gradients and the controller runs once
per batch in the cross-replica context, so every replica applies the same LR and the
summaries are written once, by summary ops in the step (no buffering: Keras 3's `fit`
needs `steps_per_execution=1` there, see below, so there is no block to buffer; a
1-replica strategy writes the same way). The guarded update runs there too, as Keras's
`LossScaleOptimizer` does it (a `tf.cond` whose branch calls `optimizer.apply` in each
replica), on the all-reduced loss and norm, so all replicas skip the same batches.
Keras 3's `fit` under a multi-replica strategy fails with
`steps_per_execution` > 1 even without lrresearch (keras-team/keras#19246), so
`ControlledModel` asks for 1 there; `lrresearch train` has no such limit.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import tensorflow as tf

from lrresearch.controllers import Controller, ControllerOutput
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.controllers.signals import MovingAverage, Signals
from lrresearch.keras_fit.eval_monitor import EvalMonitorMixin
from lrresearch.keras_fit.eval_weights import EvalWeightsMixin
from lrresearch.keras_fit.log import log_row
from lrresearch.keras_fit.saved_state import SavedStateMixin
from lrresearch.keras_fit.schedule_lr import choose_controller
from lrresearch.optimizers import whole_step
from lrresearch.step import precision, random_state
from lrresearch.step.batch import (
    all_reduce_sum,
    batch_row,
    batch_signals,
    dense_grads,
    first_replica,
    set_lr,
    write_batch_summaries,
)
from lrresearch.step.guard import NonFiniteGuard


@keras.saving.register_keras_serializable(package="lrresearch")
class ControlledModel(EvalMonitorMixin, EvalWeightsMixin, SavedStateMixin, keras.Model):
    """Wraps `model`; `fit` sets the LR every batch from `controller`, in-graph.

    Compile it with an optimizer, whose LR the controller assigns every batch (with no
    controller, a Keras `LearningRateSchedule` LR runs as one: `keras_fit.schedule_lr`),
    and a loss; metrics as usual. `fit`'s logs (progress bar,
    `History`, callbacks such as `EarlyStopping` and Keras's `TensorBoard`) carry the
    epoch's running mean of `loss/batch` (weighted by batch size, as Keras does) and
    the compiled metrics; sample and class weights weight the loss the controller sees.

    Args:
      model: the Keras model being trained.
      controller: the per-batch LR strategy, its state saved with the weights; None:
        the compiled optimizer's schedule, as `ScheduleController(schedule)`.
      loss_ma_short: window of the short loss moving average, in batches.
      loss_ma_long: window of the long loss moving average, in batches.
      loss_ma_kind: "window" or "ema", as the trainer's (see `MovingAverage`).
      max_consecutive_nonfinite: a batch whose loss or gradient norm is NaN/Inf is
        skipped (no update; logged in `guard/skipped`); after this many in a row `fit`
        stops with a warning (0: stop at the first).
      nonfinite_lr_factor: in (0, 1]; every skipped batch multiplies all later LRs by
        this.
    """

    def __init__(
        self,
        model: keras.Model,
        controller: Controller | None = None,
        loss_ma_short: int = 10,
        loss_ma_long: int = 100,
        loss_ma_kind: str = "window",
        max_consecutive_nonfinite: int = 10,
        nonfinite_lr_factor: float = 0.5,
        **kwargs,
    ):
        # The wrapped model's dtype policy (Keras's `compile` scales the loss under
        # "mixed_float16"), not the global one at the time of wrapping.
        kwargs.setdefault("dtype", model.dtype_policy)
        super().__init__(**kwargs)
        self.inner = model
        self.controller = controller
        self.ma_short = MovingAverage(loss_ma_short, loss_ma_kind, name="loss_ma_short")
        self.ma_long = MovingAverage(loss_ma_long, loss_ma_kind, name="loss_ma_long")
        self.guard = NonFiniteGuard(
            max_consecutive_nonfinite, nonfinite_lr_factor, owner="ControlledModel"
        )
        # Float16 dynamic loss scaling, set by `compile` from Keras's LossScaleOptimizer.
        self.loss_scale: precision.CountingLossScale | None = None
        # For `tf.train.Checkpoint(model=...)`: the generators that exist now.
        self.random_state = random_state.RandomState(random_state.find_states(model))
        # Rules that watch the weights (HypergradientController) need them before the
        # first step; a model built at construction (Sequential with an Input,
        # functional) has them now, so its controller state exists for load_weights.
        self._controller_built = bool(getattr(model, "built", False) and model.variables)
        if self._controller_built and controller is not None:
            controller.build(model.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.inner),
            "controller": self.controller and serialize_controller(self.controller),
            "loss_ma_short": self.ma_short.window,
            "loss_ma_long": self.ma_long.window,
            "loss_ma_kind": self.ma_short.kind,
            "max_consecutive_nonfinite": self.guard.max_consecutive,
            "nonfinite_lr_factor": self.guard.lr_factor,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> ControlledModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        controller = config.pop("controller")
        return cls(model, controller and deserialize_controller(controller), **config)

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def compile(self, *args, **kwargs) -> None:
        """Keras's `compile`, then the controller's check of the optimizer (a rule that
        cannot be exact with it refuses here, before any batch) and its warnings about
        its own arguments."""
        super().compile(*args, **kwargs)
        overflows = 0 if self.loss_scale is None else self.loss_scale.overflows.numpy()
        self.optimizer, self.loss_scale = precision.unwrap_loss_scale_optimizer(
            self.optimizer, "ControlledModel"
        )
        if self.loss_scale is not None:  # a recompile keeps the batch index
            self.loss_scale.overflows.assign(overflows)
        choose_controller(self)  # the optimizer's schedule, if it has one
        if self.controller.optimizer_hyperparameters:
            # Keras saves the optimizer's config, where a per-batch variable does not fit.
            raise ValueError(
                f"ControlledModel: the controller sets the optimizer's "
                f"{sorted(self.controller.optimizer_hyperparameters)} every batch, which "
                f"only `lrresearch train` supports so far; set cycle_momentum=False, or "
                f"unwrap DecayFollowsLR (a constant weight_decay on the optimizer)"
            )
        self.controller.check_optimizer(self.optimizer)
        for message in self.controller.run_warnings(None):
            warnings.warn(message, stacklevel=2)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """What Keras's own does (`load_model` compiles with the saved arguments and
        builds the optimizer), through our `compile`: Keras skips a custom `compile`."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force: bool = False):
        """Keras's compiled train function, followed after every call (every
        `steps_per_execution` batches) by the guard's stop check: one scalar read
        between calls, where Keras's own loop looks at `stop_training`. Here, not in a
        callback, so every `fit` (and `train_on_batch`) has it."""
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        compiled = self.train_function
        # Keras's own (its tf.function inside), for code that inspects the traced graph.
        object.__setattr__(self, "_compiled_train_function", compiled)

        def train_function(iterator):
            logs = compiled(iterator)
            self._stop_if_diverged()
            return logs

        self.train_function = train_function
        return train_function

    def _stop_if_diverged(self) -> None:
        message = self.guard.stop_message(None, "the optimizer's global_clipnorm")
        if message:
            self.stop_training = True
            warnings.warn(f"ControlledModel: {message}", RuntimeWarning, stacklevel=3)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        if not self._controller_built:
            # A subclassed model has its variables only now; `init_scope` creates the
            # controller's (e.g. HypergradientController's) outside the traced function.
            with tf.init_scope():
                self.controller.build(variables)
            self._controller_built = True
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
            scaled = loss if self.loss_scale is None else loss * self.loss_scale.scale
        grads = dense_grads(tape.gradient(scaled, variables), variables)
        if self.loss_scale is not None:  # every signal, and the update, unscaled
            grads = precision.unscale(grads, self.loss_scale)
        context = tf.distribute.get_replica_context()
        if not tf.distribute.has_strategy():
            batch_loss = loss
            signals, lr, out, extra = self._control_and_apply(None, loss, grads, grads)
        else:
            if context.num_replicas_in_sync > 1:
                _check_steps_per_execution(self.steps_per_execution)
            # Keras divides each replica's loss by the replica count, so an all-reduce
            # (SUM) gives the global-batch loss and gradients. The signals, controller,
            # LR assignment and guard run once, in the cross-replica context, so every
            # replica applies the same LR and skips the same batches; Keras's `apply`
            # all-reduces the local gradients again for the update (the price of using
            # Keras's own update: a second all-reduce). Summaries are written from the
            # replicas, where TensorBoard records replica 0's only (from merge_call they
            # would capture the replica's recording condition across graphs).
            batch_loss, batch_grads = all_reduce_sum(loss, grads, variables)
            signals, lr, out, extra = context.merge_call(
                self._control_and_apply, args=(batch_loss, batch_grads, grads)
            )
        if not tf.distribute.has_strategy() and getattr(self, "_buffer_batch_rows", False):
            log_row(self, batch_row(signals, lr, out, extra), signals.step)
        else:
            # Under a strategy, or a summary writer set by the caller (no
            # PerBatchSummaries to drain a buffer): summary ops in the step, as before.
            write_batch_summaries(signals, lr, out, extra)
        self._track_loss(x, batch_loss)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _track_loss(self, x, batch_loss: tf.Tensor) -> None:
        """Adds this batch's loss (the global-batch mean, `loss/batch`) to Keras's loss
        metric, weighted by the batch size as Keras's own `train_step` does, so `fit`'s
        logs, `History` and callbacks see the epoch's running mean. The metric is found
        as Keras's guide for a custom `train_step` does, by its name in `self.metrics`.
        Under a strategy every replica adds the global loss with its local batch size;
        the metric sums the replicas, so the mean is again the global one."""
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(batch_loss, sample_weight=batch_size)

    def _control_and_apply(
        self,
        strategy: tf.distribute.Strategy | None,
        loss: tf.Tensor,
        grads: list[tf.Tensor],
        local_grads: list[tf.Tensor],
    ) -> tuple[Signals, tf.Tensor, ControllerOutput, dict[str, tf.Tensor]]:
        """Signals, controller, LR and the guarded update for one batch; returns the
        signals, the LR, the controller's output and the guard's summaries.

        `strategy`: the cross-replica call of `merge_call`, whose values are per replica
        (`loss`, `grads` all-reduced, hence equal; `local_grads` each replica's own);
        then the returned signals carry no gradients. A `tf.cond` with a branch that
        calls `merge_call` (Keras's `apply` does) must be built here, in the
        cross-replica context, not in a replica's; its branch applies in each replica.
        """
        if strategy is not None:
            loss, grads = first_replica(strategy, (loss, list(grads)))
        variables = self.trainable_variables
        lr_variable = self.optimizer.learning_rate
        # The batch index: iterations counts applied updates, skipped batches add on.
        step = tf.cast(self.optimizer.iterations, tf.int64) + self.guard.skipped
        if self.loss_scale is not None:
            step += self.loss_scale.overflows
        signals = batch_signals(
            step, loss, grads, variables, self.ma_short, self.ma_long, lr_variable
        )
        lr, accepted, out = set_lr(self.controller, signals, lr_variable, self.guard.lr_scale)

        def apply_update() -> None:
            # `loss` (with `model.losses`, as `compute_loss`) for MoMo; cross-replica here.
            whole_step.hand_batch_loss(self.optimizer, loss)
            if strategy is None:
                self.optimizer.apply(list(signals.grads), variables)
            else:
                strategy.extended.call_for_each_replica(
                    lambda g: self.optimizer.apply(list(g), self.trainable_variables),
                    args=(list(local_grads),),
                )

        # Under loss scaling an overflowed batch is the loss scale's, not the guard's.
        scaling = precision.apply_guarded(
            self.guard, self.loss_scale, (signals.step, loss, signals.global_norm), apply_update
        )
        extra = {"guard/lr_rejected": 1.0 - tf.cast(accepted, tf.float32), **scaling}
        extra.update(self.guard.summaries())
        extra.update(whole_step.optimizer_summaries(self.optimizer))
        if strategy is not None:
            signals = signals._replace(grads=())
        return signals, lr, out, extra


def _check_steps_per_execution(steps: int) -> None:
    if steps > 1:
        raise ValueError(
            f"ControlledModel under a tf.distribute strategy with several replicas needs "
            f"compile(steps_per_execution=1), got {steps}: Keras 3's fit fails there with "
            f"'You must feed a value for placeholder tensor' even without lrresearch "
            f"(keras-team/keras#19246). For several batches per call under a strategy, "
            f"use `lrresearch train` with distribution.strategy."
        )
