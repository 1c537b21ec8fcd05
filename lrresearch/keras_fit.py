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

tf.distribute strategies are not covered by this module.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lrresearch import summaries
from lrresearch.controllers import Controller
from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.signals import MovingAverage
from lrresearch.step import batch_signals, set_lr, write_batch_summaries


@keras.saving.register_keras_serializable(package="lrresearch")
class ControlledModel(keras.Model):
    """Wraps `model`; `fit` sets the LR every batch from `controller`, in-graph.

    Compile it with an optimizer whose `learning_rate` is a plain float (the controller
    assigns it every batch) and a loss; metrics as usual.

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

    def train_step(self, data):
        x, y = data[0], data[1]
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, variables)
        signals = batch_signals(
            self.optimizer.iterations,
            loss,
            grads,
            variables,
            self.ma_short,
            self.ma_long,
            self.optimizer.learning_rate,
        )
        lr, _, out = set_lr(self.controller, signals, self.optimizer.learning_rate)
        self.optimizer.apply(list(signals.grads), variables)
        write_batch_summaries(signals, lr, out)
        return self.compute_metrics(x, y, y_pred)


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
