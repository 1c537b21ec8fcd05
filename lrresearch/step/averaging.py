"""Polynomial-decay iterate averaging (Shamir & Zhang 2013), as the DoG authors use it.

`Trainer.polynomial_averaging = gamma` keeps, next to the model's weights `x_t`, the
average

    xbar_t = (1 - (1 + gamma) / (t + gamma)) * xbar_{t-1} + (1 + gamma) / (t + gamma) * x_t

updated after every batch (`t` = 1 on the first batch, so `xbar_1 = x_1`; gamma = 0 is
the uniform average, a large gamma forgets faster). Every float variable of the model is
averaged (Batch Norm's moving statistics too); integer ones (seed states) are copied, as
the authors' `PolynomialDecayAverager` does with PyTorch's integer buffers. Evaluation
and checkpoints see the average (`eval_weights` swaps it into the model and back, bit
for bit); training continues from `x_t`. Cost: one more copy of the model's variables,
and one multiply-add per weight per batch.

References:
  Shamir, Zhang. "Stochastic Gradient Descent for Non-smooth Optimization: Convergence
  Results and Optimal Averaging Schemes." ICML 2013.
  Ivgi, Hinder, Carmon. "DoG is SGD's Best Friend." ICML 2023; the authors' code
  github.com/formll/dog, `src/dog/averager.py`, class `PolynomialDecayAverager`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import tensorflow as tf

from lrresearch.checks import check_number


class PolynomialAverager(tf.Module):
    """The running polynomial-decay average of `variables` (see the module docstring).

    Args:
      gamma: the decay exponent (>= 0; the DoG authors use 8).
      variables: the model's variables (all of them, trainable or not), in a fixed
        order; create the averager where they were created (a strategy's scope), so the
        average is mirrored as they are.
    """

    def __init__(self, gamma: float, variables: Sequence[tf.Variable]):
        super().__init__(name="polynomial_averaging")
        check_number("Trainer", "polynomial_averaging", gamma)
        if gamma < 0:
            raise ValueError(
                f"Trainer.polynomial_averaging must be >= 0 (the gamma of the average; "
                f"the DoG authors use 8) or None to turn it off, got {gamma!r}"
            )
        self.gamma = float(gamma)
        self.variables_to_average = list(variables)
        self.average = [
            tf.Variable(v.value if hasattr(v, "value") else v, trainable=False, name="average")
            for v in self.variables_to_average
        ]
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="t")
        # 1 while the model holds the average (inside `eval_weights`, and in a
        # checkpoint written there).
        self.swapped = tf.Variable(0, dtype=tf.int32, trainable=False, name="swapped")

    def update(self) -> None:
        """Folds the current weights into the average (in-graph, once per batch)."""
        t = self.t.assign_add(1)
        weight = (1.0 + self.gamma) / (tf.cast(t, tf.float64) + self.gamma)
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


def make(gamma: float | None, variables: Sequence[tf.Variable]) -> PolynomialAverager | None:
    """`Trainer.polynomial_averaging`'s averager, or None when it is off (None)."""
    return None if gamma is None else PolynomialAverager(gamma, variables)
