"""Per-batch LR control inside Keras `model.fit`, with no per-batch Python round trip.

`ControlledModel(model, controller)` wraps any Keras model: its `train_step` (traced
into Keras's own compiled train function, so `steps_per_execution` > 1 works) computes
the same `Signals` as the lrresearch trainer, asks the controller for the LR, assigns
it and applies the update; `PerBatchSummaries` sets up the summary writer so the same
tags (`lr`, `loss/batch`, `loss/ma_short`, `loss/ma_long`, `grad/global_norm`,
`controller/...`) appear in TensorBoard, at step = the optimizer's iteration count.

Saving: every Keras saving path carries the controller's and the moving averages'
state next to the weights and the optimizer (iterations, LR): `save_weights` /
`load_weights` (`.weights.h5`), `model.save` / `keras.models.load_model` (`.keras`,
which also records the controller's constructor arguments, so `load_model` rebuilds
it), `ModelCheckpoint` in both modes, and `tf.train.Checkpoint(model=...)`. Training
resumed from a `.weights.h5` or `.keras` save gives the LR sequence of the
uninterrupted run.

Under a `tf.distribute` strategy (build and compile the model in `strategy.scope()`),
the signals come from the all-reduced loss and gradients and the controller runs once
per batch in the cross-replica context, so every replica applies the same LR and the
summaries are written once. Keras 3's `fit` under a multi-replica strategy fails with
`steps_per_execution` > 1 even without lrresearch (keras-team/keras#19246), so
`ControlledModel` asks for 1 there; `lrresearch train` has no such limit.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lrresearch import summaries
from lrresearch.controllers import Controller, ControllerOutput
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.signals import MovingAverage, Signals
from lrresearch.step import (
    all_reduce_sum,
    batch_signals,
    first_replica,
    set_lr,
    write_batch_summaries,
)


@keras.saving.register_keras_serializable(package="lrresearch")
class ControlledModel(keras.Model):
    """Wraps `model`; `fit` sets the LR every batch from `controller`, in-graph.

    Compile it with an optimizer whose `learning_rate` is a plain float (the controller
    assigns it every batch) and a loss; metrics as usual. `fit`'s logs (progress bar,
    `History`, callbacks such as `EarlyStopping` and Keras's `TensorBoard`) carry the
    epoch's running mean of `loss/batch` (weighted by batch size, as Keras does) and
    the compiled metrics; sample and class weights weight the loss the controller sees.

    Args:
      model: the Keras model being trained.
      controller: the per-batch LR strategy; its state is saved with the weights.
      loss_ma_short: window of the short loss moving average, in batches.
      loss_ma_long: window of the long loss moving average, in batches.
      loss_ma_kind: "window" or "ema", as the trainer's (see `MovingAverage`).
    """

    def __init__(
        self,
        model: keras.Model,
        controller: Controller,
        loss_ma_short: int = 10,
        loss_ma_long: int = 100,
        loss_ma_kind: str = "window",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner = model
        self.controller = controller
        self.ma_short = MovingAverage(loss_ma_short, loss_ma_kind, name="loss_ma_short")
        self.ma_long = MovingAverage(loss_ma_long, loss_ma_kind, name="loss_ma_long")
        # Rules that watch the weights (HypergradientController) need them before the
        # first step; a model built at construction (Sequential with an Input,
        # functional) has them now, so its controller state exists for load_weights.
        self._controller_built = bool(getattr(model, "built", False) and model.variables)
        if self._controller_built:
            controller.build(model.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.inner),
            "controller": serialize_controller(self.controller),
            "loss_ma_short": self.ma_short.window,
            "loss_ma_long": self.ma_long.window,
            "loss_ma_kind": self.ma_short.kind,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None) -> ControlledModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, deserialize_controller(config.pop("controller")), **config)

    def controller_state(self) -> dict[str, tf.Variable]:
        """The controller's and the moving averages' variables by attribute path
        (`controller.losses`, `controller.parts.0.count`, `loss_ma_long.buffer`): the
        state that `save_own_variables` writes. The order is sorted by attribute, so it
        does not depend on the order in which the variables were created."""
        state = {}
        for prefix, module in (
            ("controller", self.controller),
            ("loss_ma_short", self.ma_short),
            ("loss_ma_long", self.ma_long),
        ):
            for path, variable in module._flatten(predicate=_is_variable, with_path=True):
                state[".".join(map(str, (prefix, *path)))] = variable
        return state

    # Keras's saving (`save_weights`, `model.save`, `ModelCheckpoint`) walks Keras
    # objects only; the controller and the moving averages are `tf.Module`s, so their
    # variables are stored here, under their attribute paths, beside the model's own.
    def save_own_variables(self, store) -> None:
        super().save_own_variables(store)
        for key, variable in self.controller_state().items():
            store[key] = variable.numpy()

    def load_own_variables(self, store) -> None:
        keys = list(store.keys())
        # Keras's own entries are numbered "0", "1", ...; ours are attribute paths.
        saved = {k: np.asarray(store[k]) for k in keys if not k.isdigit()}
        state = self.controller_state()
        saved_shapes = {k: tuple(v.shape) for k, v in saved.items()}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if saved_shapes != shapes:
            raise ValueError(
                _mismatch_message(type(self.controller).__name__, saved_shapes, shapes)
            )
        super().load_own_variables({k: store[k] for k in keys if k.isdigit()})
        for key, variable in state.items():
            variable.assign(saved[key])

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def compile(self, *args, **kwargs) -> None:
        """Keras's `compile`, then the controller's check of the optimizer (a rule that
        cannot be exact with it refuses here, before any batch) and its warnings about
        its own arguments."""
        super().compile(*args, **kwargs)
        self.controller.check_optimizer(self.optimizer)
        for message in self.controller.run_warnings(None):
            warnings.warn(message, stacklevel=2)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """What Keras's own does (`load_model` compiles with the saved arguments and
        builds the optimizer), through our `compile`: Keras skips a custom `compile`."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

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
        grads = tape.gradient(loss, variables)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            batch_loss = loss
            signals, lr, out = self._control(None, loss, grads)
            grads = signals.grads
        else:
            _check_steps_per_execution(self.steps_per_execution)
            # Keras divides each replica's loss by the replica count, so an all-reduce
            # (SUM) gives the global-batch loss and gradients. The signals, controller
            # and LR assignment run once, in the cross-replica context, so every replica
            # applies the same LR; Keras's `apply` all-reduces the local gradients again
            # for the update (the price of using Keras's own update: a second
            # all-reduce). Summaries are written from the replicas, where TensorBoard
            # records replica 0's only (from merge_call they would capture the
            # replica's recording condition across graphs).
            batch_loss, batch_grads = all_reduce_sum(loss, grads, variables)
            signals, lr, out = context.merge_call(self._control, args=(batch_loss, batch_grads))
        self.optimizer.apply(list(grads), variables)
        write_batch_summaries(signals, lr, out)
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

    def _control(
        self,
        strategy: tf.distribute.Strategy | None,
        loss: tf.Tensor,
        grads: list[tf.Tensor | None],
    ) -> tuple[Signals, tf.Tensor, ControllerOutput]:
        """Signals, controller and LR for one batch. `strategy`: the cross-replica call
        of `merge_call`, whose values are per replica and all equal; then the returned
        signals carry no gradients."""
        if strategy is not None:
            loss, grads = first_replica(strategy, (loss, list(grads)))
        signals = batch_signals(
            self.optimizer.iterations,
            loss,
            grads,
            self.trainable_variables,
            self.ma_short,
            self.ma_long,
            self.optimizer.learning_rate,
        )
        lr, _, out = set_lr(self.controller, signals, self.optimizer.learning_rate)
        if strategy is not None:
            signals = signals._replace(grads=())
        return signals, lr, out


def _check_steps_per_execution(steps: int) -> None:
    if steps > 1:
        raise ValueError(
            f"ControlledModel under a tf.distribute strategy with several replicas needs "
            f"compile(steps_per_execution=1), got {steps}: Keras 3's fit fails there with "
            f"'You must feed a value for placeholder tensor' even without lrresearch "
            f"(keras-team/keras#19246). For several batches per call under a strategy, "
            f"use `lrresearch train` with distribution.strategy."
        )


def _is_variable(value: object) -> bool:
    return isinstance(value, tf.Variable)


def _mismatch_message(
    controller: str, saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> str:
    def listing(shapes: dict[str, tuple[int, ...]]) -> str:
        return ", ".join(f"{k} {list(s)}" for k, s in sorted(shapes.items())) or "nothing"

    return (
        f"ControlledModel: the saved controller state does not fit this model's "
        f"{controller}.\n  saved:      {listing(saved)}\n  this model: {listing(expected)}\n"
        f"Load into a ControlledModel built with the controller class and arguments that "
        f"saved it (a `.keras` file records them: `keras.models.load_model(path)` rebuilds "
        f"the model), or pass `skip_mismatch=True` to `load_weights` to load the rest and "
        f"start the controller afresh."
    )


class PerBatchSummaries(keras.callbacks.Callback):
    """Provides the summary writer at `logdir` that the compiled train function writes
    into (this callback does nothing per batch).

    The writer stays open across `fit` calls: Keras keeps its traced train function
    between calls, and that function holds the writer it was traced with. Call
    `close()` when done (it is flushed at the end of every `fit`).
    """

    def __init__(self, logdir: str):
        super().__init__()
        self.logdir = logdir
        self.writer: tf.summary.SummaryWriter | None = None

    def on_train_begin(self, logs=None):
        if self.writer is None:
            self.writer = summaries.create_writer(self.logdir)
        # A context, not `set_as_default`: the default writer must not outlive `fit`.
        self._default = self.writer.as_default()
        self._default.__enter__()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self._default.__exit__(None, None, None)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
