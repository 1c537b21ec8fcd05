"""The LR range test inside a user's own Keras `fit`, on their model and pipeline.

`lr_find(model, dataset)` wraps the compiled model in `ControlledModel` with the range
test's `LRRangeController`, so the ramp, the loss smoothing and the divergence test run
in-graph inside Keras's compiled train function, exactly as in `lrresearch lr-find`
(a callback setting the LR in `on_train_batch_begin` would cost a host round trip per
batch and could not run `steps_per_execution` batches per call). Python reads one flag
after each compiled call to stop at divergence. Afterwards every variable of the model
(weights, BatchNorm statistics, RNG seeds) and of its optimizer (slots, iterations,
learning rate) is put back as it was, bit for bit. An optimizer whose LR is a Keras
`LearningRateSchedule` ramps a float LR variable put in the schedule's place for the
test (`keras_fit.schedule_lr.float_learning_rate`); afterwards the schedule, the same
object, is its LR again and the variable is gone.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lrresearch.analysis.lr_curve import LRFindResult, finish
from lrresearch.controllers.lr_range import LRRangeController
from lrresearch.keras_fit.model import ControlledModel
from lrresearch.keras_fit.schedule_lr import float_learning_rate, optimizer_schedule


class _StopAtDivergence(keras.callbacks.Callback):
    """Stops `fit` once the controller has seen the smoothed loss diverge: one scalar
    read per compiled call (Keras calls `on_train_batch_end` once per
    `steps_per_execution` batches)."""

    def __init__(self, controller: LRRangeController):
        super().__init__()
        self.controller = controller

    def on_train_batch_end(self, batch, logs=None):
        if bool(self.controller.diverged.numpy()):
            self.model.stop_training = True


def lr_find(
    model: keras.Model,
    dataset: tf.data.Dataset,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exponential",
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    steps_per_execution: int = 10,
) -> LRFindResult:
    """Runs the LR range test with `model`'s own optimizer and loss on `dataset`, then
    restores the model and the optimizer exactly.

    The LR ramps from `start_lr` to `end_lr` over `num_steps` batches (`mode`:
    "exponential" or "linear"; see `LRRangeController`); the test stops once the
    smoothed loss exceeds `diverge_factor` times its minimum. Defaults are fastai's
    (`Learner.lr_find`: 1e-7..10 over 100 batches). `dataset` is repeated if it has
    fewer than `num_steps` batches.

    Args:
      model: a compiled `keras.Model`; its optimizer's `learning_rate` a float or a
        `LearningRateSchedule` (set aside during the test, then put back).
      dataset: batched, as passed to `fit` (`(x, y)` or `(x, y, sample_weight)`).
      start_lr, end_lr: the ramp's ends, in the optimizer's LR units.
      num_steps: batches in the ramp (at least 2).
      mode: "exponential" or "linear".
      smoothing: EMA decay of the batch loss.
      diverge_factor: stop once the smoothed loss exceeds this times its minimum.
      steps_per_execution: batches per compiled call; the test may run up to this many
        minus one batches past divergence (the suggestions do not use them).

    Returns:
      `LRFindResult` with `lrs`, `batch_losses`, `smoothed_losses` and the four
      suggestions (`steepest_lr`, `min_over_10_lr`, `valley_lr`, `slide_lr`); plot it
      with `lrresearch.analysis.lr_curve.plot(result, "lr_find.png")`.

    Raises:
      NoDescentError: the loss did not descend (its `.result` holds the curve).
      ValueError: an uncompiled model, or an LR that is a callable without arguments.

    Examples:
      >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
      >>> result = lr_find(model, train_ds)
      >>> model.optimizer.learning_rate.assign(result.valley_lr)
      >>> model.fit(train_ds, epochs=3)
    """
    optimizer = _check_compiled(model)
    controller = LRRangeController(start_lr, end_lr, num_steps, smoothing, diverge_factor, mode)
    if not optimizer.built:
        # What `fit` would do first; its fresh slots are then part of the saved state.
        optimizer.build(model.trainable_variables)
    variables = [*model.variables, *optimizer.variables]  # before a schedule is set aside
    saved = [v.numpy() for v in variables]
    try:
        with float_learning_rate(optimizer):
            optimizer.iterations.assign(0)  # the ramp's batch index starts at 0
            wrapped = ControlledModel(model, controller)
            wrapped.compile(
                optimizer=optimizer,
                loss=model.loss,
                loss_weights=getattr(model, "loss_weights", None),
                steps_per_execution=steps_per_execution,
            )
            wrapped.fit(
                dataset.repeat(),
                steps_per_epoch=num_steps,
                epochs=1,
                verbose=0,
                shuffle=False,  # a dataset is the user's to shuffle; Keras warns otherwise
                callbacks=[_StopAtDivergence(controller)],
            )
            batches = int(optimizer.iterations.numpy()) + int(wrapped.guard.skipped.numpy())
            if wrapped.loss_scale is not None:  # float16 batches whose gradients overflowed
                batches += int(wrapped.loss_scale.overflows.numpy())
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)
    return finish(controller, min(batches, num_steps), spell="{}".format)


def _check_compiled(model: keras.Model) -> keras.optimizers.Optimizer:
    """The model's optimizer, after checking that the range test can ramp its LR."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(model, "compiled", False):
        raise ValueError(
            "lr_find: `model` must be compiled with its optimizer and loss, e.g. "
            "model.compile(optimizer=keras.optimizers.SGD(0.1), loss=...); got an "
            "uncompiled model"
        )
    optimizer_schedule(optimizer, "lr_find")  # refuses an LR that is a callable without arguments
    return optimizer
