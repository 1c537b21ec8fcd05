"""`ScheduleFreeWrapper`: Schedule-Free around any per-variable Keras optimizer (the
authors' `ScheduleFreeWrapper`, `schedulefree/wrap_schedulefree.py`), step for step.

The base optimizer (SGD, Adam, RMSprop, ...) steps the sequence `z`; the wrapper keeps
`_ScheduleFree`'s average `x` of the `z`s, trains at the interpolation `y` and swaps
`x` in for evaluation and checkpoints (`schedule_free.py`). Registered with gin
(`Trainer.optimizer = @ScheduleFreeWrapper`, `ScheduleFreeWrapper.base_optimizer =
@keras.optimizers.Adam`) and with Keras's serialization (the base's config included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_interval, check_nonnegative
from lrresearch.optimizers.mechanic import BaseSpec, apply_base_step, make_base_optimizer
from lrresearch.optimizers.schedule_free import _ScheduleFree
from lrresearch.optimizers.weight_decay import decay_coefficient

# Arguments of `_ScheduleFree` and Keras that the wrapper refuses, with the fix.
_REFUSED = {
    "weight_decay": "set weight_decay_at_y, or the base's (e.g. base_optimizer='adamw')",
    "warmup_steps": "the wrapper has none, as the authors'; warm the LR up with the "
    "controller (e.g. the Warmup controller)",
}


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class ScheduleFreeWrapper(_ScheduleFree):
    """Schedule-Free around any base optimizer: the authors' `ScheduleFreeWrapper`.

    Batch `k` (0-based) at the LR `lr` the trainer set (the base's LR: no warmup here;
    a controller's warmup shapes `lr`, as a scheduler on the authors' base), with the
    gradient `g` taken at `y`, `beta = momentum` and `wd = weight_decay_at_y`:

        z  = z - lr * wd * y;   y = y - lr * wd * (1 - beta) * y    # when wd > 0
        x  = y + (1 - 1/beta) (z - y)            # the average (unchanged by the decay)
        z  = base.step(z, g, lr)                 # the base's own update, its state
        lr_max = max(lr_max, lr);  weight = (k + 1) ** r * lr_max ** weight_lr_power
        c  = weight / (weight_sum += weight)     # 0 while weight_sum is 0
        x  = x + c (z - x)
        y  = x + (1 - beta) (z - x)

    The variables hold `y` while training; `z` is a slot, `x` is recovered from `y` and
    `z` (a transient tensor during the update, as the authors keep it in the `z`
    buffer while the base steps). `z` starts as the weights of the first batch. The
    base optimizer is built on the same variables and checkpointed with the wrapper
    (its slots, its `iterations`, advanced once per applied batch, and its LR variable,
    set to `lr` before each base step); its decoupled weight decay (AdamW's) decays `z`,
    as the authors' base's `weight_decay` does; `weight_decay_at_y` decays at `y`.
    Call `swap_to_eval` before evaluating or saving and `swap_to_train` after (the
    trainer does; `_ScheduleFree`'s docstring). The wrapper's momentum replaces the
    base's: the authors advise a base without momentum (`'sgd'`, Adam with `beta_1 =
    0`), though both may be used.

    Logs per batch `optimizer/effective_lr` (`lr`, the LR the base stepped `z` with; for
    base SGD the step size on the gradient), `optimizer/average_weight` (`c`) and
    `optimizer/weight_sum`.

    Memory: two copies of the weights (`z` and `stash`) on top of the base's slots
    (none for SGD, two for Adam); during the update a transient `x` (one more copy).

    Differences from the references: a zero LR on the first batch gives `c = 0` here
    (the authors' code divides by zero). optax's `contrib.schedule_free` takes the LR
    schedule apart from the base's, has no `r` nor `weight_decay_at_y`, and calls its
    base at `y` rather than `z`, so a base whose update reads the weights (AdamW's
    decay) decays at `y` there (`docs/parity/schedule_free_wrap.md` measures it).

    Args:
      learning_rate: the base's LR (0.0025; the trainer assigns it every batch).
      base_optimizer: a short name of `lrresearch.optimizers.OPTIMIZERS` ("sgd",
        "adam", ...), a Keras optimizer class or factory called as
        `cls(learning_rate=...)`, or a serialized optimizer (`get_config`'s form); a
        per-variable optimizer (not Prodigy, Mechanic, ...). For torch's momentum SGD
        use `@MomentumSGD` (Keras's momentum SGD keeps the LR in its velocity; a
        warning says so).
      momentum: the interpolation `beta` between `z` and `x`, in (0, 1] (0.9).
      weight_decay_at_y: decay computed at `y` (>= 0; 0), on every variable as the
        authors'; a controller may set it every batch.
      r: the average's weights grow as `(k + 1) ** r` (0).
      weight_lr_power: the average's weights are `lr_max ** weight_lr_power` (2).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...,
        applied to the gradient before the base sees it); `weight_decay` must stay None.

    Examples:
      In a gin file (`lrresearch/config/gin/strategies/schedule_free_wrap.gin`):

        Trainer.optimizer = @ScheduleFreeWrapper
        ScheduleFreeWrapper.base_optimizer = @keras.optimizers.Adam
        keras.optimizers.Adam.beta_1 = 0.0

      In Keras, `model.compile(optimizer=ScheduleFreeWrapper(0.01, "sgd"), ...)`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky. "The Road Less Scheduled."
      NeurIPS 2024 (arXiv:2405.15682). The authors' code,
      github.com/facebookresearch/schedule_free, PyPI `schedulefree` 1.4.1
      (`schedulefree/wrap_schedulefree.py`, `ScheduleFreeWrapper`); optax 0.2.8
      `optax.contrib.schedule_free`.
    """

    _beta_attribute = "momentum"

    def __init__(
        self,
        learning_rate: float = 0.0025,
        base_optimizer: BaseSpec = "sgd",
        momentum: float = 0.9,
        weight_decay_at_y: float = 0.0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        name: str = "ScheduleFreeWrapper",
        **kwargs: Any,
    ):
        owner = "ScheduleFreeWrapper"
        for argument, fix in _REFUSED.items():
            if kwargs.pop(argument, None) is not None:
                raise ValueError(f"{owner}.{argument} must not be set: {fix}")
        check_nonnegative(owner, weight_decay_at_y=weight_decay_at_y)
        super().__init__(learning_rate, weight_decay_at_y, 0, r, weight_lr_power, name,
                         **kwargs)  # fmt: skip
        check_interval(
            owner, "momentum", momentum, "(0, 1]",
            "x = y + (1 - 1/momentum) (z - y) divides by it (0.9 by default)",
        )  # fmt: skip
        self.momentum = float(momentum)
        self.base_spec = base_optimizer if isinstance(base_optimizer, str) else None
        self.base_optimizer = make_base_optimizer(
            base_optimizer, float(learning_rate), owner, "ScheduleFreeWrapper", "schedule_free_wrap"
        )

    def build(self, variables: list[keras.Variable]) -> None:
        """`_ScheduleFree`'s slots, and the base optimizer built on `variables`."""
        if self.built:
            return
        super().build(variables)
        self.base_optimizer.build(variables)

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch (see the class docstring); the variables must hold `y`."""
        self._start_z(variables)
        beta = self._beta()
        averages = self._to_z(variables, tf.cast(learning_rate, tf.float64), beta)
        apply_base_step(self.base_optimizer, grads, variables, learning_rate)
        step = tf.cast(self.iterations, tf.float64)
        _, average_weight = self._average_weight(learning_rate, step)
        for variable, x in zip(variables, averages, strict=True):
            dtype = variable.dtype
            z = tf.convert_to_tensor(variable)
            self.assign(self.z[self._get_variable_index(variable)], z)
            x = x + tf.cast(average_weight, dtype) * (z - x)
            self.assign(variable, x + tf.cast(1 - beta, dtype) * (z - x))

    def _to_z(
        self, variables: Sequence[keras.Variable], lr: tf.Tensor, beta: tf.Tensor
    ) -> list[tf.Tensor]:
        """Applies the decay at `y`, puts `z` in the variables for the base's step and
        returns the average `x` per variable (`lr`, `beta`: float64 scalars)."""
        decay = decay_coefficient(self.decay_at_y, tf.float64)
        averages = []
        for variable in variables:
            dtype = variable.dtype
            y = tf.convert_to_tensor(variable)
            z = tf.convert_to_tensor(self.z[self._get_variable_index(variable)])
            if decay is not None:  # the authors' z -= lr wd y; y -= lr wd (1 - beta) y
                z_decay = lr * decay
                z = z - tf.cast(z_decay, dtype) * y
                y = y - tf.cast(z_decay * (1 - beta), dtype) * y
            averages.append(y + tf.cast(1 - 1 / beta, dtype) * (z - y))
            self.assign(variable, z)
        return averages

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["warmup_steps"]
        config["weight_decay_at_y"] = config.pop("weight_decay")
        base = self.base_spec or keras.optimizers.serialize(self.base_optimizer)
        return {**config, "base_optimizer": base, "momentum": self.momentum}
