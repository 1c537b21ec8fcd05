"""`Prodigy` and `DAdaptAdam`: Adam whose step size `d` is estimated from the run itself.

Both keep Adam's moments per variable and one scalar `d` for the whole model, a lower
bound of the distance to the solution. `d` comes from sums over every variable
(`<g, s>`, `<g, x_0 - x>`, `||s||_1`) taken before any weight moves, so both implement
`WholeStepOptimizer.update_all`. They are transcriptions of the authors' PyTorch code,
one parameter group, operation by operation, including its two quirks:

* a step whose `||s||_1` sum is 0 (the first gradient is all zeros) updates the
  moments and `s` but returns before `d`, the step counter or any weight changes;
* a step at LR 0 (a warmup's first batch) changes nothing at all.
Both are done in-graph (`tf.where`), so the step compiles under XLA.

Dtypes: the moments, `s` and `x_0` have the variable's dtype, as the authors' state has
the parameter's; the scalar state (`d`, its sums, the step size) is float64 whatever
the variables are, as the authors' scalars are Python floats. The per-variable sums
are taken in the variable's dtype and added up in float64 (the authors' `.item()`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_int, check_number
from lrresearch.optimizers.float64_state import (
    STATE_DTYPE,
    float32_summaries,
    scalar_state,
    sum64,
)
from lrresearch.optimizers.weight_decay import decay_coefficient
from lrresearch.optimizers.whole_step import WholeStepOptimizer


def _py_max(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Python's `max(a, b)`: `a` unless `b > a`, so a NaN `b` is ignored (tf.maximum
    would return NaN)."""
    return tf.where(b > a, b, a)


def _py_min(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Python's `min(a, b)`: `a` unless `b < a`."""
    return tf.where(b < a, b, a)


def _flat(x: Any, slice_p: int = 1) -> tf.Tensor:
    """`x.flatten()[::slice_p]`: every `slice_p`-th entry, `[ceil(size / slice_p)]`."""
    flat = tf.reshape(tf.convert_to_tensor(x), [-1])
    return flat if slice_p == 1 else flat[::slice_p]


# Python numbers enter as `x * 0.9`, never `tf.cast(0.9, dtype)`: `tf.cast` makes a
# float32 constant first (0.999 -> 0.99900001), 4e-8 off in float64.


def _slot_prefix(variable: Any) -> str:
    """The variable's name as Keras's `add_variable_from_reference` writes it."""
    name = getattr(variable, "path", None) or str(variable.name).replace(":", "_")
    return name.replace("/", "_")


# The authors' ranges (or ours where they check none): argument -> (test, what it must be).
_RANGES = {
    "learning_rate": (lambda v: v >= 0, ">= 0 (0: the step changes nothing)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "beta_1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta_3": (lambda v: 0 <= v < 1, "in [0, 1) or None (sqrt(beta_2))"),
    "epsilon": (lambda v: v > 0, "> 0"),
    "d0": (lambda v: v > 0, "> 0"),
    "d_coef": (lambda v: v > 0, "> 0"),
    "growth_rate": (lambda v: v > 0, "> 0 or None (no limit)"),
}


def _check_arguments(owner: str, **values: Any) -> None:
    """Raises ValueError naming `owner.arg` unless each number is in `_RANGES` (None is
    allowed for `beta_3` and `growth_rate`, and inf for `growth_rate`) and every
    other argument is a bool (`slice_p`: an int >= 1)."""
    for arg, value in values.items():
        if arg == "slice_p":
            check_int(owner, arg, value, 1)
        elif arg not in _RANGES:
            if not isinstance(value, bool):
                raise ValueError(f"{owner}.{arg} must be True or False, got {value!r}")
        elif not (value is None and arg in ("beta_3", "growth_rate")):
            if not (arg == "growth_rate" and value == math.inf):
                check_number(owner, arg, value)
            test, must = _RANGES[arg]
            if not test(value):
                raise ValueError(f"{owner}.{arg} must be {must}, got {value!r}")


class _AdaptiveAdam(WholeStepOptimizer):
    """What `Prodigy` and `DAdaptAdam` share: arguments, the scalar state, Adam's second
    moment, the bias-corrected step size and the final weight update."""

    # The decay a controller may set every batch (`lrresearch.optimizers.weight_decay`).
    weight_decay_attribute = "decay_rate"

    def __init__(self, learning_rate: float, name: str, settings: dict[str, Any], **kwargs):
        """`settings`: the authors' arguments by our names, checked and kept for
        `get_config` (a `growth_rate` of inf as None)."""
        # Keras's own `weight_decay` is applied outside the update; the authors' decay
        # (coupled or decoupled, at the adapted step) is ours, so the base never sees it.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        numbers = {"learning_rate": learning_rate} if isinstance(learning_rate, float | int) else {}
        _check_arguments(type(self).__name__, **numbers, **settings)  # not a Keras schedule
        if settings["growth_rate"] == math.inf:
            settings["growth_rate"] = None
        self._settings = dict(settings)
        self.beta_1, self.beta_2 = float(settings["beta_1"]), float(settings["beta_2"])
        self.epsilon, self.d0 = float(settings["epsilon"]), float(settings["d0"])
        self.decay_rate, self.growth_rate = float(settings["weight_decay"]), settings["growth_rate"]
        self.decouple = settings["decouple"]
        self.use_bias_correction = settings["use_bias_correction"]

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates the scalar state and Adam's second moment (per variable)."""
        if self.built:
            return
        super().build(variables)
        self.d = scalar_state(self, "d", self.d0)
        self.d_hat = scalar_state(self, "d_hat", 0.0)
        self.effective_lr = scalar_state(self, "effective_lr", 0.0)
        # The authors' `k`: steps that reached the update (not Keras's `iterations`).
        self.k = self.add_variable(shape=(), initializer="zeros", dtype="int64", name="k")
        self.exp_avg_sq = self.add_optimizer_variables(variables, "exp_avg_sq")

    def _flat_slot(self, variable: keras.Variable, name: str, slice_p: int) -> keras.Variable:
        """A zero slot `[ceil(size / slice_p)]` in the variable's dtype."""
        return self.add_variable(
            shape=(-(-math.prod(variable.shape) // slice_p),), dtype=variable.dtype,
            name=f"{_slot_prefix(variable)}_{name}",
        )  # fmt: skip

    def _step_size(self, learning_rate: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`(lr, d, dlr)`, float64: `dlr = d lr sqrt(1 - beta_2^(k+1)) / (1 - beta_1^(k+1))`
        with bias correction, else `d lr`."""
        lr = tf.cast(tf.convert_to_tensor(learning_rate), STATE_DTYPE)
        d = tf.convert_to_tensor(self.d)
        correction = tf.constant(1.0, STATE_DTYPE)
        if self.use_bias_correction:
            k1 = tf.cast(tf.convert_to_tensor(self.k), STATE_DTYPE) + 1.0
            correction = (1.0 - self.beta_2**k1) ** 0.5 / (1.0 - self.beta_1**k1)
        return lr, d, d * lr * correction

    def _coupled_grads(self, grads: Sequence[Any], variables: Sequence[Any]) -> list[tf.Tensor]:
        """The gradients in the variables' dtypes, plus `weight_decay * w` when the decay
        is coupled (the authors' `grad.add_(p, alpha=decay)`)."""
        out = []
        for g, var in zip(grads, variables, strict=True):
            g = tf.cast(g, var.dtype)
            decay = decay_coefficient(self.decay_rate, var.dtype)
            if decay is not None and not self.decouple:
                g = g + decay * tf.convert_to_tensor(var)
            out.append(g)
        return out

    def _update_slot(self, slot: keras.Variable, new: tf.Tensor, apply: tf.Tensor) -> tf.Tensor:
        """Assigns `new` if `apply` (else keeps the slot); returns the slot's value."""
        value = tf.where(apply, new, tf.convert_to_tensor(slot))
        self.assign(slot, value)
        return value

    def _take_step(self, proceed: tf.Tensor, variables: Sequence[keras.Variable],
                   directions: Sequence[tf.Tensor], second_moments: Sequence[tf.Tensor],
                   scale: tf.Tensor, eps: tf.Tensor, dlr: tf.Tensor) -> None:  # fmt: skip
        """If `proceed`: `w -= weight_decay dlr w` (decoupled decay), then
        `w += scale * direction / (sqrt(second_moment) + eps)` (the authors' `addcdiv_`)."""
        for var, direction, moment in zip(variables, directions, second_moments, strict=True):
            dtype = var.dtype
            old = tf.convert_to_tensor(var)
            new = old
            decay = decay_coefficient(self.decay_rate, STATE_DTYPE)
            if decay is not None and self.decouple:
                new = new + tf.cast(-decay * dlr, dtype) * new
            denominator = tf.sqrt(moment) + tf.cast(eps, dtype)
            new = new + tf.cast(scale, dtype) * direction / denominator
            self.assign(var, tf.where(proceed, new, old))

    def _finish(self, proceed: tf.Tensor, d: tf.Tensor, d_hat: tf.Tensor, dlr: tf.Tensor):
        """Stores `d`, `d_hat`, the step size applied (0 if no weight moved) and `k + 1`
        when the step reached the update."""
        self._update_slot(self.d, d, proceed)
        self._update_slot(self.d_hat, d_hat, proceed)
        self.assign(self.effective_lr, tf.where(proceed, dlr, tf.zeros_like(dlr)))
        self.assign_add(self.k, tf.cast(proceed, tf.int64))

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` (the `dlr` the update applied to the weights: `d lr`
        times the bias correction; 0 on a step that moved no weight), `optimizer/d` and
        `optimizer/d_hat` (after the update), as float32."""
        return float32_summaries(
            {"effective_lr": self.effective_lr, "d": self.d, "d_hat": self.d_hat}
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._settings}


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class Prodigy(_AdaptiveAdam):
    """Prodigy: Adam at the step `d * lr`, with `d` from the weights' progress along the
    gradients since `x_0` (as the authors' `prodigyopt.Prodigy`, one parameter group).

    Each step, with `dlr = d lr` (times `sqrt(1 - beta_2^(k+1)) / (1 - beta_1^(k+1))`
    with `use_bias_correction`) and `g` the gradient (`+ weight_decay * w` unless
    `decouple`):

        r        = d / d0
        num      = beta_3 num + r dlr <g, x_0 - x>                 (summed over variables)
        m        = beta_1 m + d (1 - beta_1) g
        v        = beta_2 v + d^2 (1 - beta_2) g^2
        s        = beta_3 s + r dlr g   (r d g with safeguard_warmup)
        d_hat    = d_coef num / ||s||_1                             (all variables)
        d        = max(d, d_hat) while d == d0;  d_max = max(d_max, d_hat)
        d        = min(d_max, d growth_rate)
        w        = w - weight_decay dlr w            (if decouple)
        w        = w - dlr m / (sqrt(v) + d eps)     (beta_1 = 0: dlr d g / (...))

    `x_0` is the weights at the first update (the authors copy it at their first
    `step()`, even one that returns early). `x_0` and `s` are one more copy of the
    weights each, `1/slice_p` of it with `slice_p > 1` (then `num` and `||s||_1` use
    every `slice_p`-th entry of each variable, flattened, an approximation, as the
    authors'). Logs `optimizer/effective_lr` (`dlr`), `optimizer/d` and `optimizer/d_hat`.

    Args:
      learning_rate: the authors' `lr`, a multiplier of the adapted step (1.0; the
        trainer assigns it every batch, e.g. for a warmup; at 0 a step changes nothing).
      beta_1, beta_2: Adam's moment decays (0.9, 0.999).
      beta_3: the decay of `num` and `s` (None: `sqrt(beta_2)`).
      epsilon: added to `sqrt(v)`, times `d` (1e-8).
      weight_decay: the decay coefficient (0).
      decouple: AdamW-style decay `w -= weight_decay dlr w` (True, the authors'
        default); False adds `weight_decay * w` to the gradient.
      use_bias_correction: Adam's bias correction in `dlr` (False).
      safeguard_warmup: leave `lr` out of `s` (False), for warmup schedules.
      d0: the initial `d` (1e-6).
      d_coef: the multiplier of `d_hat` (1.0), the authors' preferred knob.
      growth_rate: the most `d` may grow in one step, a factor (None: no limit, the
        authors' `inf`; `float('inf')` is accepted).
      slice_p: use every `slice_p`-th entry for `num` and `s` (1: all, exact).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, ...).

    Examples:
      Trainer.optimizer = @Prodigy                  # in a gin file; controller: constant 1.0
      Prodigy.weight_decay = 0.01
      model.compile(optimizer=Prodigy(), ...)       # ControlledModel / Keras fit

    References:
      Mishchenko, Defazio. "Prodigy: An Expeditiously Adaptive Parameter-Free Learner."
      ICML 2024 (arXiv:2306.06101); the authors' code, github.com/konstmish/prodigy
      (`prodigyopt/prodigy.py`, class `Prodigy`, PyPI `prodigyopt` 1.1.2).
    """

    def __init__(self, learning_rate: float = 1.0, beta_1: float = 0.9, beta_2: float = 0.999,
                 beta_3: float | None = None, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float | None = None, slice_p: int = 1, name: str = "Prodigy",
                 **kwargs: Any):  # fmt: skip
        settings = {"beta_1": beta_1, "beta_2": beta_2, "beta_3": beta_3, "epsilon": epsilon,
                    "weight_decay": weight_decay, "decouple": decouple,
                    "use_bias_correction": use_bias_correction,
                    "safeguard_warmup": safeguard_warmup, "d0": d0, "d_coef": d_coef,
                    "growth_rate": growth_rate, "slice_p": slice_p}  # fmt: skip
        super().__init__(learning_rate, name, settings, **kwargs)
        self.beta_3 = None if beta_3 is None else float(beta_3)
        self.safeguard_warmup, self.d_coef, self.slice_p = safeguard_warmup, float(d_coef), slice_p

    def build(self, variables: list[keras.Variable]) -> None:
        """Adds `d_max`, `num`, `m` (none when beta_1 = 0), `s` and `x_0`."""
        if self.built:
            return
        super().build(variables)
        self.d_max = scalar_state(self, "d_max", self.d0)
        self.d_numerator = scalar_state(self, "d_numerator", 0.0)
        self.exp_avg = self.add_optimizer_variables(variables, "exp_avg") if self.beta_1 else []
        self.s = [self._flat_slot(v, "s", self.slice_p) for v in variables]
        self.p0 = [self._flat_slot(v, "p0", self.slice_p) for v in variables]
        # Calls of update_all: x_0 is copied at the first (a copy at build would need an
        # initializer that reads the weights, which XLA cannot lift out of Keras's fit).
        self.calls = self.add_variable(shape=(), initializer="zeros", dtype="int64", name="calls")

    def update_all(
        self, grads: Sequence[tf.Tensor], variables: Sequence[keras.Variable], learning_rate: Any
    ) -> None:
        """One batch (see the class docstring)."""
        lr, d, dlr = self._step_size(learning_rate)
        active = lr > 0.0  # the authors' `group_lr > 0`: at LR 0 nothing changes
        beta_3 = math.sqrt(self.beta_2) if self.beta_3 is None else self.beta_3
        ratio = d / self.d0
        s_scale = ratio * d if self.safeguard_warmup else ratio * dlr
        grads = self._coupled_grads(grads, variables)
        delta = d_denom = tf.constant(0.0, STATE_DTYPE)
        second_moments, directions = [], []
        for i, (g, var) in enumerate(zip(grads, variables, strict=True)):
            dtype = var.dtype
            g_sliced = _flat(g, self.slice_p)
            p_sliced = _flat(var, self.slice_p)
            p0 = self._update_slot(self.p0[i], p_sliced, tf.equal(self.calls, 0))
            p0_minus_p = p0 - p_sliced
            delta += ratio * dlr * sum64(g_sliced * p0_minus_p)
            if self.beta_1:
                m = self.exp_avg[i] * self.beta_1 + tf.cast(d * (1.0 - self.beta_1), dtype) * g
                directions.append(self._update_slot(self.exp_avg[i], m, active))
            else:
                directions.append(g)
            v_scale = tf.cast(d * d * (1.0 - self.beta_2), dtype)
            v = self.exp_avg_sq[i] * self.beta_2 + v_scale * g * g
            second_moments.append(self._update_slot(self.exp_avg_sq[i], v, active))
            s = self.s[i] * beta_3 + tf.cast(s_scale, dtype) * g_sliced
            d_denom += sum64(tf.abs(self._update_slot(self.s[i], s, active)))
        # The authors return before touching d or a weight when sum |s| is 0.
        proceed = active & tf.not_equal(d_denom, 0.0)
        numerator = self.d_numerator * beta_3 + delta
        d_hat = self.d_coef * numerator / tf.where(proceed, d_denom, 1.0)
        new_d = tf.where(tf.equal(d, self.d0), _py_max(d, d_hat), d)
        d_max = _py_max(tf.convert_to_tensor(self.d_max), d_hat)
        new_d = _py_min(d_max, new_d * (self.growth_rate or math.inf))
        self._update_slot(self.d_numerator, numerator, proceed)
        self._update_slot(self.d_max, d_max, proceed)
        scale = -dlr if self.beta_1 else -dlr * new_d
        self._take_step(proceed, variables, directions, second_moments, scale,
                        new_d * self.epsilon, dlr)  # fmt: skip
        self._finish(proceed, new_d, d_hat, dlr)
        self.assign_add(self.calls, tf.constant(1, tf.int64))


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class DAdaptAdam(_AdaptiveAdam):
    """D-Adaptation for Adam: Adam whose first moment accumulates `dlr g`, with `d` from
    the weighted progress `<g, s>` (as the authors' `dadaptation.DAdaptAdam`, one
    parameter group, `layer_scale` 1).

    Each step, with `dlr = d lr` (times the bias correction with
    `use_bias_correction`), `b = sqrt(beta_2)` and `g` the gradient
    (`+ weight_decay * w` unless `decouple`):

        num    = b num + (1 - b) dlr <g, s / (sqrt(v) + eps)>   (old s, v; all variables)
        m      = beta_1 m + dlr (1 - beta_1) g
        v      = beta_2 v + (1 - beta_2) g^2
        s      = b s + dlr (1 - b) g
        d_hat  = num / ((1 - b) ||s||_1)
        d      = max(d, min(d_hat, d growth_rate))
        w      = w - weight_decay dlr w                     (if decouple)
        w      = w - m / (sqrt(v) + eps)

    `m` holds the step size (each gradient at the `dlr` of its batch), so
    `optimizer/effective_lr` is the `dlr` this batch's gradient and decay entered
    with. `s` is one more copy of the weights. Logs `optimizer/effective_lr`,
    `optimizer/d` and `optimizer/d_hat`.

    Args:
      learning_rate: the authors' `lr`, a multiplier of the adapted step (1.0; the
        trainer assigns it every batch; at 0 a step changes nothing).
      beta_1, beta_2: Adam's moment decays (0.9, 0.999).
      epsilon: added to `sqrt(v)` (1e-8).
      weight_decay: the decay coefficient (0).
      decouple: AdamW-style decay `w -= weight_decay dlr w` (False, the authors'
        default: `weight_decay * w` is added to the gradient).
      use_bias_correction: Adam's bias correction in `dlr` (False).
      d0: the initial `d` (1e-6).
      growth_rate: the most `d` may grow in one step, a factor (None: no limit, the
        authors' `inf`; `float('inf')` is accepted).
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, ...).

    Examples:
      Trainer.optimizer = @DAdaptAdam               # in a gin file; controller: constant 1.0
      DAdaptAdam.growth_rate = 1.02                 # a warmup-like cap on d's growth
      model.compile(optimizer=DAdaptAdam(), ...)

    References:
      Defazio, Mishchenko. "Learning-Rate-Free Learning by D-Adaptation." ICML 2023;
      the authors' code, github.com/facebookresearch/dadaptation
      (`dadaptation/dadapt_adam.py`, class `DAdaptAdam`).
    """

    def __init__(self, learning_rate: float = 1.0, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.0, decouple: bool = False,
                 use_bias_correction: bool = False, d0: float = 1e-6,
                 growth_rate: float | None = None, name: str = "DAdaptAdam",
                 **kwargs: Any):  # fmt: skip
        settings = {"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                    "weight_decay": weight_decay, "decouple": decouple,
                    "use_bias_correction": use_bias_correction, "d0": d0,
                    "growth_rate": growth_rate}  # fmt: skip
        super().__init__(learning_rate, name, settings, **kwargs)

    def build(self, variables: list[keras.Variable]) -> None:
        """Adds the weighted numerator, `m` and `s`."""
        if self.built:
            return
        super().build(variables)
        self.numerator_weighted = scalar_state(self, "numerator_weighted", 0.0)
        self.exp_avg = self.add_optimizer_variables(variables, "exp_avg")
        self.s = self.add_optimizer_variables(variables, "s")

    def update_all(
        self, grads: Sequence[tf.Tensor], variables: Sequence[keras.Variable], learning_rate: Any
    ) -> None:
        """One batch (see the class docstring)."""
        lr, d, dlr = self._step_size(learning_rate)
        active = lr > 0.0
        root = math.sqrt(self.beta_2)
        grads = self._coupled_grads(grads, variables)
        accumulated = sk_l1 = tf.constant(0.0, STATE_DTYPE)
        second_moments, directions = [], []
        for i, (g, var) in enumerate(zip(grads, variables, strict=True)):
            dtype = var.dtype
            s_old, v_old = (tf.convert_to_tensor(x[i]) for x in (self.s, self.exp_avg_sq))
            denominator = tf.sqrt(v_old) + self.epsilon
            accumulated += dlr * sum64(g * (s_old / denominator))
            m = self.exp_avg[i] * self.beta_1 + tf.cast(dlr * (1.0 - self.beta_1), dtype) * g
            directions.append(self._update_slot(self.exp_avg[i], m, active))
            v = v_old * self.beta_2 + (1.0 - self.beta_2) * g * g
            second_moments.append(self._update_slot(self.exp_avg_sq[i], v, active))
            s = s_old * root + tf.cast(dlr * (1.0 - root), dtype) * g
            sk_l1 += sum64(tf.abs(self._update_slot(self.s[i], s, active)))
        # The authors return before touching d or a weight when sum |s| is 0.
        proceed = active & tf.not_equal(sk_l1, 0.0)
        numerator = root * self.numerator_weighted + (1.0 - root) * accumulated
        d_hat = numerator / ((1.0 - root) * tf.where(proceed, sk_l1, 1.0))
        new_d = _py_max(d, _py_min(d_hat, d * (self.growth_rate or math.inf)))
        self._update_slot(self.numerator_weighted, numerator, proceed)
        minus_one = tf.constant(-1.0, STATE_DTYPE)
        self._take_step(proceed, variables, directions, second_moments, minus_one,
                        tf.constant(self.epsilon, STATE_DTYPE), dlr)  # fmt: skip
        self._finish(proceed, new_d, d_hat, dlr)
