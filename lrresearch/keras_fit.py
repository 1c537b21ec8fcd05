"""Per-batch LR control inside Keras `model.fit`, with no per-batch Python round trip.

`ControlledModel(model, controller)` wraps any Keras model: its `train_step` (traced
into Keras's own compiled train function, so `steps_per_execution` > 1 works) computes
the same `Signals` as the lrresearch trainer, asks the controller for the LR, assigns
it and applies the update; `PerBatchSummaries` sets up the summary writer so the same
tags (`lr`, `loss/batch`, `loss/ma_short`, `loss/ma_long`, `grad/global_norm`,
`controller/...`) appear in TensorBoard, at step = the optimizer's iteration count.
The controller's and the moving averages' variables are tracked by the model, so Keras
checkpoints (`ModelCheckpoint(save_weights_only=False)`, `tf.train.Checkpoint(model=...)`)
save them.

Work in progress: the integration is tested for the LR sequence against the trainer;
`model.save` to `.keras` and tf.distribute are not covered yet.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lrresearch import summaries
from lrresearch.controllers import Controller
from lrresearch.signals import MovingAverage
from lrresearch.step import batch_signals, set_lr, write_batch_summaries


class ControlledModel(keras.Model):
    """Wraps `model`; `fit` sets the LR every batch from `controller`, in-graph.

    Compile it with an optimizer whose `learning_rate` is a plain float (the controller
    assigns it every batch) and a loss; metrics as usual.
    """

    def __init__(
        self,
        model: keras.Model,
        controller: Controller,
        loss_ma_short: int = 10,
        loss_ma_long: int = 100,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner = model
        self.controller = controller
        self.ma_short = MovingAverage(loss_ma_short, name="loss_ma_short")
        self.ma_long = MovingAverage(loss_ma_long, name="loss_ma_long")

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
