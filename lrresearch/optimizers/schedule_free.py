"""`ScheduleFreeSGD` and `ScheduleFreeAdamW`: Schedule-Free learning (Defazio et al.
2024), the authors' `SGDScheduleFree` and `AdamWScheduleFree` step for step.

Schedule-Free keeps three sequences per variable: `z` (the base optimizer's iterate),
`x` (a weighted average of the `z`s, the weights to evaluate and save) and `y`, the
interpolation between them at which gradients are taken. As in the authors' code the
model's variables hold `y` while training and `z` is a slot; `x` is never stored, it is
recovered from `y` and `z`. So the model must hold `x` for evaluation and checkpoints
and `y` again to train: `swap_to_eval(variables)` and `swap_to_train(variables)` (see
`_ScheduleFree`; the trainer calls them through `whole_step.eval_weights`).

Keras 3.15 ships its own `keras.optimizers.ScheduleFreeAdamW`; it averages with weight
`1/step` and has neither `r`, `weight_lr_power` nor the LR-weighted average, so its `x`
differs from the authors' whenever the LR changes (warmup, a controller). This module
follows the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_int, check_interval, check_nonnegative, check_number
from lrresearch.optimizers.weight_decay import decay_coefficient
from lrresearch.optimizers.whole_step import WholeStepOptimizer


class _ScheduleFree(WholeStepOptimizer):
    """What Schedule-Free SGD and AdamW share: the warmup, the LR-weighted average, the
    `y`/`z` update, the eval/train swap and the per-batch diagnostics. A subclass gives
    the direction `d` (its `_direction`) and the name of its interpolation constant
    `beta` (`momentum` for SGD, `beta_1` for AdamW, `_beta_attribute`).

    Batch `k` (0-based; `iterations` before the update) at the LR `lr` the trainer set:

        lr_k     = lr * min(1, (k + 1) / warmup_steps)      # 1 when warmup_steps = 0
        lr_max   = max(lr_max, lr_k)                        # lr_max starts at -1
        weight   = (k + 1) ** r * lr_max ** weight_lr_power
        weight_sum += weight
        c        = weight / weight_sum                      # 0 while weight_sum is 0
        y        = y + c * (z - y) + lr_k * (beta * (1 - c) - 1) * d
        z        = z - lr_k * d

    which is the paper's `z -= lr_k d; x = (1 - c) x + c z; y = (1 - beta) z + beta x`
    without storing `x`. `z` starts as the weights of the first batch (copied at `build`
    and again at batch 0, as the authors clone them at their first step). The scalars
    (`lr_max`, `weight_sum`, `c`, `lr_k`) are float64, as the authors' Python floats:
    `weight_sum` grows by `lr**2` per batch, and a float32 running sum of 1e6
    increments of 0.0025**2 comes out 0.67% low (measured with numpy).

    Modes. The optimizer starts in train mode: the variables hold `y`. `update_all`
    assumes train mode (it does not check: a batch applied in eval mode trains from
    `x`, and the next `swap_to_train` overwrites that update with the stash).
    `swap_to_eval(variables)` copies `y` into the `stash` slot and sets every variable to
    `x = y + (1 - 1/beta) (z - y)`, as the authors' `eval()`; `swap_to_train(variables)`
    copies the stash back, so a round trip leaves `y` bit for bit (the authors'
    `train()` interpolates back, which is not exact). Both are TF ops, callable in a
    `tf.function` (XLA too), and idempotent: the int64 variable `eval_mode` (0 train, 1
    eval) records the mode and a second call is a no-op. A checkpoint written in eval
    mode holds `x` in the model, `y` in `stash` and `eval_mode = 1`: restore it and call
    `swap_to_train` to continue training exactly; load only the model's weights to get
    the averaged model.

    Memory: two copies of the weights (`z` and `stash`), three for AdamW (plus
    `exp_avg_sq`), in the variables' dtype.
    """

    _beta_attribute: str
    # The decay a controller may set every batch (`lrresearch.optimizers.weight_decay`).
    weight_decay_attribute = "decay_at_y"

    def __init__(
        self,
        learning_rate: float,
        weight_decay: float,
        warmup_steps: int,
        r: float,
        weight_lr_power: float,
        name: str,
        **kwargs: Any,
    ):
        # Keras's own `weight_decay` is decoupled (`w -= lr * wd * w`); ours is the
        # authors', added to the direction at `y`, so the base class never sees it.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        owner = type(self).__name__
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                f"{owner}.gradient_accumulation_steps must be None, got "
                f"{kwargs['gradient_accumulation_steps']!r}: Keras counts `iterations` per "
                "micro-batch, which would shift the warmup, the average's weights and the "
                "bias correction; use a bigger batch instead"
            )
        if isinstance(learning_rate, (int, float)):
            check_nonnegative(owner, learning_rate=learning_rate)
        check_nonnegative(owner, weight_decay=weight_decay)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        check_number(owner, "r", r)
        check_number(owner, "weight_lr_power", weight_lr_power)
        self.decay_at_y = float(weight_decay)
        self.warmup_steps, self.r = warmup_steps, float(r)
        self.weight_lr_power = float(weight_lr_power)

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates `z` (a copy of the weights), `stash`, and the scalar state."""
        if self.built:
            return
        super().build(variables)
        self.z = self.add_optimizer_variables(variables, "z")
        for z, variable in zip(self.z, variables, strict=True):
            z.assign(variable)
        self.stash = self.add_optimizer_variables(variables, "stash")

        def scalar(name: str, dtype: str, value: float) -> keras.Variable:
            initializer = keras.initializers.Constant(value)
            return self.add_variable((), initializer, dtype, "only_first_replica", name=name)

        self.eval_mode = scalar("eval_mode", "int64", 0)
        self.lr_max = scalar("lr_max", "float64", -1.0)
        self.weight_sum = scalar("weight_sum", "float64", 0.0)
        self.effective_lr = scalar("effective_lr", "float64", 0.0)
        self.average_weight = scalar("average_weight", "float64", 0.0)

    def _beta(self) -> tf.Tensor:
        """The interpolation constant (float64 scalar; a variable if a controller sets
        it every batch)."""
        beta = getattr(self, self._beta_attribute)
        if isinstance(beta, float):  # tf.cast(0.9, ...) would round it to float32 first
            return tf.constant(beta, tf.float64)
        return tf.cast(beta, tf.float64)

    def _direction(
        self, grad: tf.Tensor, variable: keras.Variable, index: int, step: tf.Tensor
    ) -> tf.Tensor:
        """The base optimizer's direction `d` for one variable (its shape and dtype),
        weight decay included; `step` is `k` (float64)."""
        raise NotImplementedError

    def _decayed(self, direction: tf.Tensor, variable: keras.Variable) -> tf.Tensor:
        """`direction + weight_decay * y` (the authors' decay at `y`), or `direction`."""
        decay = decay_coefficient(self.decay_at_y, variable.dtype)
        if decay is None:
            return direction
        return direction + decay * tf.convert_to_tensor(variable)

    def _average_weight(
        self, learning_rate: tf.Tensor, step: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """This batch's warmed-up LR `lr_k` and the average's weight `c` (float64
        scalars); updates `lr_max`, `weight_sum` and the logged values."""
        lr = tf.cast(learning_rate, tf.float64)
        if self.warmup_steps:
            lr = lr * tf.minimum(tf.constant(1.0, tf.float64), (step + 1) / self.warmup_steps)
        lr_max = tf.maximum(tf.convert_to_tensor(self.lr_max), lr)
        weight = tf.pow(step + 1, self.r) * tf.pow(lr_max, self.weight_lr_power)
        weight_sum = tf.convert_to_tensor(self.weight_sum) + weight
        average_weight = tf.math.divide_no_nan(weight, weight_sum)
        for variable, value in (
            (self.lr_max, lr_max),
            (self.weight_sum, weight_sum),
            (self.effective_lr, lr),
            (self.average_weight, average_weight),
        ):
            self.assign(variable, value)
        return lr, average_weight

    def _start_z(self, variables: Sequence[keras.Variable]) -> None:
        """At batch 0, `z` = the weights (the authors clone them at their first step)."""

        def copy() -> None:
            for variable in variables:
                self.assign(self.z[self._get_variable_index(variable)], variable)

        tf.cond(tf.equal(self.iterations, 0), copy, lambda: None)

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch (see the class docstring); the variables must hold `y` (train mode)."""
        step = tf.cast(self.iterations, tf.float64)
        lr, average_weight = self._average_weight(learning_rate, step)
        self._start_z(variables)
        y_coefficient = lr * (self._beta() * (1 - average_weight) - 1)
        for grad, variable in zip(grads, variables, strict=True):
            index = self._get_variable_index(variable)
            dtype = variable.dtype
            direction = self._direction(tf.cast(grad, dtype), variable, index, step)
            y, z = tf.convert_to_tensor(variable), tf.convert_to_tensor(self.z[index])
            y = y + tf.cast(average_weight, dtype) * (z - y)
            self.assign(variable, y + tf.cast(y_coefficient, dtype) * direction)
            self.assign(self.z[index], z - tf.cast(lr, dtype) * direction)

    def swap_to_eval(self, variables: Sequence[keras.Variable]) -> None:
        """Variables to `x` (`y` kept in `stash`); a no-op in eval mode, and before
        `build` (the weights are then `x = y = z`, as the authors' `eval()` before a
        step). TF ops."""
        if not self.built:
            return

        def to_x() -> None:
            weight = 1 - 1 / self._beta()
            for variable in variables:
                index = self._get_variable_index(variable)
                y = tf.convert_to_tensor(variable)
                self.assign(self.stash[index], y)
                z = tf.convert_to_tensor(self.z[index])
                self.assign(variable, y + tf.cast(weight, variable.dtype) * (z - y))
            self.assign(self.eval_mode, tf.constant(1, tf.int64))

        tf.cond(tf.equal(self.eval_mode, 0), to_x, lambda: None)

    def swap_to_train(self, variables: Sequence[keras.Variable]) -> None:
        """Variables back to `y` from `stash`, exactly; a no-op in train mode and before
        `build`. TF ops."""
        if not self.built:
            return

        def to_y() -> None:
            for variable in variables:
                self.assign(variable, self.stash[self._get_variable_index(variable)])
            self.assign(self.eval_mode, tf.constant(0, tf.int64))

        tf.cond(tf.equal(self.eval_mode, 1), to_y, lambda: None)

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` (`lr_k`), `optimizer/average_weight` (`c`, the weight
        of this batch's `z` in `x`) and `optimizer/weight_sum`, float32."""
        values = {
            "effective_lr": self.effective_lr,
            "average_weight": self.average_weight,
            "weight_sum": self.weight_sum,
        }
        return {f"optimizer/{k}": tf.cast(v, tf.float32) for k, v in values.items()}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "weight_decay": float(self.decay_at_y),
            "warmup_steps": self.warmup_steps,
            "r": self.r,
            "weight_lr_power": self.weight_lr_power,
        }


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD: the authors' `SGDScheduleFree`, with `d = g + weight_decay * y`.

    The schedule, the average and the eval/train swap are `_ScheduleFree`'s (see its
    docstring): call `swap_to_eval` before evaluating or saving and `swap_to_train`
    after (the trainer does). Logs `optimizer/effective_lr` (the LR after warmup),
    `optimizer/average_weight` and `optimizer/weight_sum` per batch.

    Args:
      learning_rate: the authors' `lr` (1.0, as theirs; the trainer assigns it every
        batch, and a controller's factor multiplies it).
      momentum: the interpolation `beta` between `z` and `x`, in (0, 1) (0.9).
      weight_decay: L2 coefficient added to the gradient at `y` (>= 0; 0), on every
        variable as the authors' (Keras's `exclude_from_weight_decay` does not apply).
      warmup_steps: batches of linear warmup inside the optimizer (0: none).
      r: the average's weights grow as `(k + 1) ** r` (0).
      weight_lr_power: the average's weights are `lr_max ** weight_lr_power` (2; 0 for
        none).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      `Trainer.optimizer = @ScheduleFreeSGD` and `ScheduleFreeSGD.warmup_steps = 100` in
      a gin file; in Keras, `model.compile(optimizer=ScheduleFreeSGD(1.0), ...)`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky. "The Road Less Scheduled."
      NeurIPS 2024 (arXiv:2405.15682); the authors' code,
      github.com/facebookresearch/schedule_free, PyPI `schedulefree` 1.4.1
      (`schedulefree/sgd_schedulefree.py`, class `SGDScheduleFree`).
    """

    _beta_attribute = "momentum"

    def __init__(
        self,
        learning_rate: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        name: str = "ScheduleFreeSGD",
        **kwargs: Any,
    ):
        super().__init__(learning_rate, weight_decay, warmup_steps, r, weight_lr_power,
                         name, **kwargs)  # fmt: skip
        check_interval(
            "ScheduleFreeSGD",
            "momentum",
            momentum,
            "(0, 1)",
            "as the authors' SGDScheduleFree (0.9 by default)",
        )
        self.momentum = float(momentum)

    def _direction(
        self, grad: tf.Tensor, variable: keras.Variable, index: int, step: tf.Tensor
    ) -> tf.Tensor:
        return self._decayed(grad, variable)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum}


class _SecondMoment(_ScheduleFree):
    """Adam's second moment `exp_avg_sq` (`beta_2`, `epsilon`) for the Adam-type
    Schedule-Free optimizers (AdamW, RAdam)."""

    beta_2: float
    epsilon: float

    def build(self, variables: list[keras.Variable]) -> None:
        """`_ScheduleFree`'s slots, and `exp_avg_sq` (zeros)."""
        if self.built:
            return
        super().build(variables)
        self.exp_avg_sq = self.add_optimizer_variables(variables, "exp_avg_sq")

    def _normalized(
        self, grad: tf.Tensor, variable: keras.Variable, index: int, step: tf.Tensor
    ) -> tf.Tensor:
        """Updates `v = beta_2 v + (1 - beta_2) g^2` and returns `g / (sqrt(v / (1 -
        beta_2^(k+1))) + epsilon)` (`step` is `k`, float64)."""
        exp_avg_sq = self.exp_avg_sq[index]
        previous = tf.convert_to_tensor(exp_avg_sq)
        new_exp_avg_sq = previous * self.beta_2 + (1 - self.beta_2) * tf.square(grad)
        self.assign(exp_avg_sq, new_exp_avg_sq)
        beta_2 = tf.constant(self.beta_2, tf.float64)
        bias_correction = tf.cast(1 - tf.pow(beta_2, step + 1), variable.dtype)
        return grad / (tf.sqrt(new_exp_avg_sq / bias_correction) + self.epsilon)


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class ScheduleFreeAdamW(_SecondMoment):
    """Schedule-Free AdamW: the authors' `AdamWScheduleFree`, with the direction

        v = beta_2 * v + (1 - beta_2) * g**2                        # exp_avg_sq, from 0
        d = g / (sqrt(v / (1 - beta_2 ** (k + 1))) + epsilon) + weight_decay * y

    (no first moment: `beta_1` is the interpolation `beta`). The schedule, the average
    and the eval/train swap are `_ScheduleFree`'s (see its docstring): call
    `swap_to_eval` before evaluating or saving and `swap_to_train` after (the trainer
    does). Logs `optimizer/effective_lr` (the LR after warmup),
    `optimizer/average_weight` and `optimizer/weight_sum` per batch. Unlike Keras's
    `keras.optimizers.ScheduleFreeAdamW` (average weight `1/step`), the average is
    weighted by `lr_max ** weight_lr_power`, as the authors'.

    Args:
      learning_rate: the authors' `lr` (0.0025, as theirs; the trainer assigns it every
        batch).
      beta_1: the interpolation `beta` between `z` and `x` (the authors' `betas[0]`), in
        (0, 1] (0.9).
      beta_2: the second-moment decay (`betas[1]`), in [0, 1) (0.999).
      epsilon: added to the denominator (the authors' `eps`; 1e-8).
      weight_decay: coefficient of `y` added to the normalized direction (>= 0; 0), on
        every variable as the authors' (`exclude_from_weight_decay` does not apply).
      warmup_steps: batches of linear warmup inside the optimizer (0: none).
      r: the average's weights grow as `(k + 1) ** r` (0).
      weight_lr_power: the average's weights are `lr_max ** weight_lr_power` (2; 0 for
        none).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      `Trainer.optimizer = @ScheduleFreeAdamW` and `ScheduleFreeAdamW.warmup_steps = 100`
      in a gin file; in Keras, `model.compile(optimizer=ScheduleFreeAdamW(), ...)`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky. "The Road Less Scheduled."
      NeurIPS 2024 (arXiv:2405.15682); the authors' code,
      github.com/facebookresearch/schedule_free, PyPI `schedulefree` 1.4.1
      (`schedulefree/adamw_schedulefree.py`, class `AdamWScheduleFree`).
    """

    _beta_attribute = "beta_1"

    def __init__(
        self,
        learning_rate: float = 0.0025,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        name: str = "ScheduleFreeAdamW",
        **kwargs: Any,
    ):
        super().__init__(learning_rate, weight_decay, warmup_steps, r, weight_lr_power,
                         name, **kwargs)  # fmt: skip
        owner = "ScheduleFreeAdamW"
        check_interval(
            owner,
            "beta_1",
            beta_1,
            "(0, 1]",
            "x = y + (1 - 1/beta_1) (z - y) divides by it (0.9 by default)",
        )
        check_interval(
            owner,
            "beta_2",
            beta_2,
            "[0, 1)",
            "the bias correction 1 - beta_2 ** (k + 1) must not be 0 (0.999)",
        )
        check_nonnegative(owner, epsilon=epsilon)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _direction(
        self, grad: tf.Tensor, variable: keras.Variable, index: int, step: tf.Tensor
    ) -> tf.Tensor:
        return self._decayed(self._normalized(grad, variable, index, step), variable)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}  # fmt: skip
