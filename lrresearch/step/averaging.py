"""Weight averages that evaluation and checkpoints use: polynomial-decay averaging
(Shamir & Zhang 2013, as the DoG authors use it) and an exponential moving average (EMA,
as Keras's `use_ema`, optax's `ema` and TF's `ExponentialMovingAverage`).

`Trainer.weight_averaging` picks one (`'polynomial'`, `'ema'` or None);
`Trainer.polynomial_averaging = gamma` alone still means `'polynomial'`. Both keep, next
to the model's weights `x_t`, an average updated after every batch (`t` = 1 on the
first batch), in-graph, as `xbar_t = (1 - w_t) * xbar_{t-1} + w_t * x_t`:

    polynomial (gamma >= 0):  w_t = (1 + gamma) / (t + gamma)          (xbar_1 = x_1)
    EMA, warmup 'keras':      w_1 = 1, then w_t = 1 - decay            (xbar_1 = x_1)
    EMA, warmup 'debias':     w_t = (1 - decay) / (1 - decay**t)       (xbar_1 = x_1)
    EMA, warmup 'num_updates': w_t = 1 - min(decay, (1 + t) / (10 + t)), from xbar_0 = x_0

Polynomial: gamma = 0 is the uniform average, a large gamma forgets faster. EMA 'keras'
is Keras's optimizer `use_ema=True, ema_momentum=decay` (the average starts at the
weights after the first update, then a constant decay); 'debias' is optax's
`ema(decay, debias=True)` applied to the weights, `ema_t / (1 - decay**t)` with
`ema_0 = 0`, kept here as that quotient directly (the same numbers up to float32
rounding); 'num_updates' is TF's `tf.train.ExponentialMovingAverage(decay,
num_updates=t)`, whose shadow variables start at the initial weights `x_0` and whose
decay ramps up as `min(decay, (1 + t) / (10 + t))`. `t` counts batches, a skipped
(non-finite) one included; Keras's own counts applied updates.

Every float variable of the model is averaged (Batch Norm's moving statistics too, as
timm's `ModelEmaV2`; Keras's `use_ema` averages the trainable ones only); integer ones
(seed states) are copied, as the DoG authors' `PolynomialDecayAverager` does with
PyTorch's integer buffers. Evaluation and checkpoints see the average (`eval_weights`
swaps it into the model and back, bit for bit); training continues from `x_t`. Cost:
one more copy of the model's variables, and one multiply-add per weight per batch.

References:
  Shamir, Zhang. "Stochastic Gradient Descent for Non-smooth Optimization: Convergence
  Results and Optimal Averaging Schemes." ICML 2013.
  Ivgi, Hinder, Carmon. "DoG is SGD's Best Friend." ICML 2023; the authors' code
  github.com/formll/dog, `src/dog/averager.py`, class `PolynomialDecayAverager`.
  Keras, `keras/src/optimizers/base_optimizer.py`,
  `_update_model_variables_moving_average`; optax, `optax/transforms/_accumulation.py`,
  `ema`; TensorFlow, `tf.train.ExponentialMovingAverage`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import gin
import tensorflow as tf

from lrresearch.checks import check_number


class WeightAverager(tf.Module):
    """A running average of `variables`, `xbar_t = (1 - w_t) xbar_{t-1} + w_t x_t`
    (see the module docstring); subclasses give the weight `w_t`.

    Args:
      variables: the model's variables (all of them, trainable or not), in a fixed
        order; create the averager where they were created (a strategy's scope), so the
        average is mirrored as they are. The average starts as their values now.
    """

    def __init__(self, variables: Sequence[tf.Variable], name: str):
        super().__init__(name=name)
        self.variables_to_average = list(variables)
        self.average = [
            tf.Variable(v.value if hasattr(v, "value") else v, trainable=False, name="average")
            for v in self.variables_to_average
        ]
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="t")
        # 1 while the model holds the average (inside `eval_weights`, and in a
        # checkpoint written there).
        self.swapped = tf.Variable(0, dtype=tf.int32, trainable=False, name="swapped")

    def weight(self, t: tf.Tensor) -> tf.Tensor:
        """`w_t`, float64, for the `t`-th update (int64, 1 on the first batch)."""
        raise NotImplementedError

    def update(self) -> None:
        """Folds the current weights into the average (in-graph, once per batch)."""
        t = self.t.assign_add(1)
        weight = self.weight(t)
        for variable, average in zip(self.variables_to_average, self.average, strict=True):
            value = tf.convert_to_tensor(variable)
            if not value.dtype.is_floating:
                average.assign(value)
                continue
            w = tf.cast(weight, value.dtype)
            average.assign(average * (1.0 - w) + value * w)

    def _swap(self, to: int) -> None:
        def swap() -> None:
            for variable, average in zip(self.variables_to_average, self.average, strict=True):
                held = tf.identity(tf.convert_to_tensor(variable))
                variable.assign(average.read_value())
                average.assign(held)

        tf.cond(tf.equal(self.swapped, to), lambda: None, swap)
        self.swapped.assign(to)

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """Inside the block the model holds the average; after it, its own weights."""
        self._swap(1)
        try:
            yield
        finally:
            self._swap(0)

    def to_train_weights(self) -> None:
        """The model's own weights back in place (after restoring a checkpoint)."""
        self._swap(0)


class PolynomialAverager(WeightAverager):
    """The polynomial-decay average, `w_t = (1 + gamma) / (t + gamma)`.

    Args:
      gamma: the decay exponent (>= 0; the DoG authors use 8).
      variables: as `WeightAverager`'s.
    """

    def __init__(self, gamma: float, variables: Sequence[tf.Variable]):
        check_number("Trainer", "polynomial_averaging", gamma)
        if gamma < 0:
            raise ValueError(
                f"Trainer.polynomial_averaging must be >= 0 (the gamma of the average; "
                f"the DoG authors use 8) or None to turn it off, got {gamma!r}"
            )
        super().__init__(variables, name="polynomial_averaging")
        self.gamma = float(gamma)

    def weight(self, t: tf.Tensor) -> tf.Tensor:
        return (1.0 + self.gamma) / (tf.cast(t, tf.float64) + self.gamma)


EMA_WARMUPS = ("keras", "debias", "num_updates")


@gin.configurable(denylist=["variables"])
class EMA(WeightAverager):
    """The exponential moving average of the weights, `Trainer.weight_averaging = 'ema'`.

    `xbar_t = (1 - w_t) xbar_{t-1} + w_t x_t`, with `w_t` by `warmup` (`t` = 1 on the
    first batch): "keras" `w_1 = 1`, then `1 - decay` (Keras's `use_ema`); "debias"
    `(1 - decay) / (1 - decay**t)` (optax's `ema(decay, debias=True)`); "num_updates"
    `1 - min(decay, (1 + t) / (10 + t))` from the initial weights (TF's
    `ExponentialMovingAverage(decay, num_updates)`). Details in
    `lrresearch.step.averaging`.

    Args:
      variables: the model's variables (the trainer passes them; not a binding).
      decay: in [0, 1); the average's memory is about `1 / (1 - decay)` batches.
      warmup: "keras", "debias" or "num_updates": how the first batches are weighted.

    Examples:
      Trainer.weight_averaging = 'ema'
      EMA.decay = 0.999
      EMA.warmup = 'debias'
    """

    def __init__(
        self, variables: Sequence[tf.Variable] = (), decay: float = 0.999, warmup: str = "keras"
    ):
        check_number("EMA", "decay", decay)
        if not 0 <= decay < 1:
            raise ValueError(
                f"EMA.decay must be in [0, 1) (Keras's ema_momentum; 0.999 averages over "
                f"about 1,000 batches), got {decay!r}"
            )
        if warmup not in EMA_WARMUPS:
            raise ValueError(
                f"EMA.warmup must be 'keras' (Keras's use_ema), 'debias' (optax's ema) or "
                f"'num_updates' (TF's ExponentialMovingAverage), got {warmup!r}"
            )
        super().__init__(variables, name="ema")
        self.decay, self.warmup = float(decay), warmup

    def weight(self, t: tf.Tensor) -> tf.Tensor:
        t = tf.cast(t, tf.float64)
        if self.warmup == "keras":
            return tf.where(t > 1.0, 1.0 - tf.constant(self.decay, tf.float64), 1.0)
        if self.warmup == "debias":
            decay = tf.constant(self.decay, tf.float64)
            return (1.0 - decay) / (1.0 - tf.pow(decay, t))
        return 1.0 - tf.minimum(tf.constant(self.decay, tf.float64), (1.0 + t) / (10.0 + t))


WEIGHT_AVERAGING = ("polynomial", "ema")


def make(
    kind: str | None, gamma: float | None, variables: Sequence[tf.Variable]
) -> WeightAverager | None:
    """The averager of `Trainer.weight_averaging = kind` (with
    `Trainer.polynomial_averaging = gamma`), or None when both are None. Raises
    ValueError naming the bindings when they disagree."""
    if kind is not None and kind not in WEIGHT_AVERAGING:
        raise ValueError(
            f"Trainer.weight_averaging must be 'polynomial', 'ema' or None, got {kind!r}"
        )
    if kind == "ema":
        if gamma is not None:
            raise ValueError(
                f"Trainer.weight_averaging = 'ema' and Trainer.polynomial_averaging = "
                f"{gamma!r} are both set, and a run keeps one average; set "
                f"Trainer.polynomial_averaging = None (the EMA's settings are EMA.decay "
                f"and EMA.warmup), or Trainer.weight_averaging = 'polynomial'"
            )
        return EMA(variables)
    if kind == "polynomial" and gamma is None:
        raise ValueError(
            "Trainer.weight_averaging = 'polynomial' needs its gamma: set "
            "Trainer.polynomial_averaging = <gamma >= 0> (the DoG authors use 8)"
        )
    return None if gamma is None else PolynomialAverager(gamma, variables)
