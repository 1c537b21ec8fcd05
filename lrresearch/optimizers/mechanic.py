"""`Mechanic`: a learning-rate tuner that wraps any Keras optimizer and scales its
updates by a learned factor `s` (Cutkosky, Defazio and Mehta, 2023).

Each batch the base optimizer (SGD, Adam, ...) takes its ordinary step at the LR the
trainer set; Mechanic reads that step off the weights, adds it to the base's summed
steps `delta` and puts the weights at `x_ref + s * delta`, where `x_ref` is where
training started and `s` comes from an online-learning "tuner" (six of them, one per
`beta`, summed). Registered with gin (`Trainer.optimizer = @Mechanic`,
`Mechanic.base_optimizer = @keras.optimizers.Adam`) and with Keras's serialization.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_nonnegative, check_number, check_positive
from lrresearch.optimizers.whole_step import WholeStepOptimizer

BaseSpec = str | Callable[..., keras.optimizers.Optimizer] | dict[str, Any]

# Base-optimizer options that would change the gradient or the weights outside the
# `update_step` Mechanic calls; set them on Mechanic instead (clipping) or not at all.
_UNSUPPORTED_BASE_OPTIONS = (
    "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "gradient_accumulation_steps",
    "loss_scale_factor",
)  # fmt: skip


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class Mechanic(WholeStepOptimizer):
    """Mechanic: any base optimizer's step, scaled by a tuned factor `s`.

    Per batch `t`, with weights `x_t`, gradient `g_t` (after Mechanic's own clipping, if
    any) and this batch's LR `lr_t` (every variable as one flat vector; sums over every
    variable that has a gradient):

        u_t   = base.step(g_t, lr_t) applied to x_t, read off as (its new x) - x_t
        x'_t  = x_t + u_t                       (the weights after the base step)
        S     = sum_i s_i                       (from the previous batch; 0 at first)
        Delta = (x_t - x_ref) / (S + eps)       (store_delta=True: the stored Delta)
        h     = <Delta, g_t + s_decay * S * ||g_t|| / (||x'_t|| + eps) * x'_t>
        m_i   = max(beta_i m_i, |h|)            (m starts at 1e-6)
        v_i   = beta_i^2 v_i + h^2
        r_i   = max(0, beta_i r_i - s_i h)      (with the previous s_i)
        s_i   = (s_init / n * m_i + r_i) / (sqrt(v_i) + eps)     (n = len(betas))
        Delta = Delta + u_t
        x_{t+1} = x_ref + max(sum_i s_i, 0) * Delta

    `x_ref` is the weights the first batch starts from (copied at the first update, as
    the reference creates its state at its first step). Since `x_t = x_ref + S * Delta`
    (up to `eps`), the batch moves the weights by `sum_i s_i` times the base's update
    plus a rescaling of the path so far: the base's step is multiplied by the new
    `sum_i s_i`. `h` is the gradient's inner
    product with that path, in units of the base's steps; `s_decay` (the paper's
    lambda) pulls `s` down in proportion to the weights' norm.

    Logged every batch (`step_summaries`, after the update):
      `optimizer/effective_lr`: `max(sum_i s_i, 0) * lr_t` with this batch's new `s`:
        the factor the base optimizer's update for LR 1 was multiplied by this batch
        (for base SGD, the step size applied to the gradient).
      `optimizer/scale`: `sum_i s_i` after this batch (the paper's `s`).

    Memory: per model weight, `x_ref` (one copy of the weights) and, with
    `store_delta=True`, `Delta` (a second copy), on top of the base optimizer's own slots
    (none for SGD, two copies for Adam); four vectors of `len(betas)` scalars (`s`, `m`,
    `v`, `r`). During the update, transient tensors hold `x_t` and `u_t` (two more
    copies of the weights, as the reference's clones). The tuner's state is float64 if
    any variable is float64, else float32.

    The base optimizer is built on the same variables and checkpointed with Mechanic
    (its slots, its `iterations`, which Mechanic advances once per applied batch, and its
    LR variable, which Mechanic sets to `lr_t` before each base step). Its decoupled
    weight decay (`keras.optimizers.AdamW`'s) is applied as its own `apply` would;
    clipping, EMA, gradient accumulation and loss scaling belong on Mechanic (Keras's
    arguments) and are refused on the base.

    Args:
      learning_rate: the base optimizer's LR (a float; the trainer assigns it every
        batch, so a controller's schedule shapes it). Its scale hardly matters, as `s`
        learns it; the authors' README uses 1.0 and warns that very small values cost
        numerical precision.
      base_optimizer: a short name of `lrresearch.optimizers.OPTIMIZERS` ("sgd", "adam",
        "adamw", ...), a Keras optimizer class or factory called as
        `cls(learning_rate=...)`, or a serialized optimizer (`get_config`'s form). For
        momentum, the authors' `mechanize(torch.optim.SGD, momentum=0.9)` is
        `@MomentumSGD` (PyTorch's form); `'momentum'`, `'nesterov'` and Keras's SGD with
        momentum keep the LR inside their velocity, which differs once the LR changes
        per batch (a warning says so; `docs/parity/mechanic.md` measures both).
      s_decay: the paper's lambda, the weight-decay analogue in `h` (>= 0).
      betas: the tuners' discount factors, each in [0, 1]; one `s_i` per beta.
      s_init: the initial scale, spread over the tuners (> 0).
      eps: added to norms and denominators (> 0).
      store_delta: keep `Delta` as a slot (one more copy of the weights) instead of
        recomputing it from `x_t - x_ref`; the two differ by the factor `S / (S + eps)`.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...);
        `weight_decay` must stay None (use the base's, or `s_decay`).

    Examples:
      In gin: `Trainer.optimizer = @Mechanic`, `Mechanic.base_optimizer =
      @keras.optimizers.Adam` (or `'adam'`) and a controller giving LR 1.0.
      In Keras: `model.compile(optimizer=Mechanic(1.0, base_optimizer="adam"), ...)`.

    References:
      Cutkosky, Defazio, Mehta. "Mechanic: A Learning Rate Tuner." NeurIPS 2023.
      https://arxiv.org/abs/2306.00144
      The authors' code, followed here: PyPI `mechanic-pytorch` 0.0.1
      (github.com/optimizedlearning/mechanic), `mechanic_pytorch/mechanic.py`,
      `mechanize` and `_step`. Its README says the paper's experiments ran the JAX
      version, `optax.contrib.mechanize`.
    """

    def __init__(
        self,
        learning_rate: float = 1.0,
        base_optimizer: BaseSpec = "sgd",
        s_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999),
        s_init: float = 1e-8,
        eps: float = 1e-8,
        store_delta: bool = False,
        name: str = "Mechanic",
        **kwargs: Any,
    ):
        weight_decay = kwargs.pop("weight_decay", None)
        if weight_decay is not None:
            raise ValueError(
                f"Mechanic.weight_decay must be None, got {weight_decay!r}; set the base "
                "optimizer's (e.g. base_optimizer='adamw') or Mechanic.s_decay"
            )
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        check_nonnegative("Mechanic", s_decay=s_decay)
        check_positive("Mechanic", s_init=s_init, eps=eps)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or not betas:
            raise ValueError(
                f"Mechanic.betas must be a non-empty list of numbers in [0, 1], got {betas!r}"
            )
        for beta in betas:
            check_number("Mechanic", "betas", beta)
            if not 0.0 <= beta <= 1.0:
                raise ValueError(f"Mechanic.betas must each be in [0, 1], got {betas!r}")
        if not isinstance(store_delta, bool):
            raise ValueError(f"Mechanic.store_delta must be True or False, got {store_delta!r}")
        self.s_decay, self.s_init, self.eps = float(s_decay), float(s_init), float(eps)
        self.betas = tuple(float(beta) for beta in betas)
        self.store_delta = store_delta
        self.base_spec = base_optimizer if isinstance(base_optimizer, str) else None
        self.base_optimizer = make_base_optimizer(base_optimizer, float(learning_rate))

    def build(self, variables: list[keras.Variable]) -> None:
        """Builds the base optimizer on `variables` and creates `x_ref`, `Delta`
        (store_delta only) and the tuners' state."""
        if self.built:
            return
        super().build(variables)
        self.base_optimizer.build(variables)
        float64 = any(keras.backend.standardize_dtype(v.dtype) == "float64" for v in variables)
        dtype = "float64" if float64 else "float32"
        size = (len(self.betas),)
        self.s = self.add_variable(size, initializer="zeros", dtype=dtype, name="s")
        # Initializers only, no assign: Keras's fit builds the optimizer while tracing its
        # train function, and an assign there never ran (m stayed 0, so s stayed 0).
        # 1e-6 in `dtype` (Keras's Constant initializer rounds it through float32).
        self.max_product = self.add_variable(
            size, initializer=_fill(1e-6), dtype=dtype, name="max_product"
        )
        self.sum_squared_products = self.add_variable(
            size, initializer="zeros", dtype=dtype, name="sum_squared_products"
        )
        self.reward = self.add_variable(size, initializer="zeros", dtype=dtype, name="reward")
        self.effective_lr = self.add_variable(
            (), initializer="zeros", dtype=dtype, name="effective_lr"
        )
        self.x_ref = self.add_optimizer_variables(variables, "x_ref")  # set at the first update
        self.deltas = self.add_optimizer_variables(variables, "delta") if self.store_delta else []

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch: the base's step, then the tuner, then `x = x_ref + s * Delta`."""
        dtype = self.s.dtype
        indices = [self._get_variable_index(v) for v in variables]
        refs = [self.x_ref[i] for i in indices]
        before = [tf.convert_to_tensor(v) for v in variables]  # x_t
        tf.cond(
            tf.equal(self.iterations, 0),
            lambda: self._copy(refs, before),
            lambda: self._copy([], []),
        )
        after = self._base_step(grads, variables, learning_rate)  # x_t + u_t
        scale = tf.reduce_sum(self.s)
        if self.store_delta:
            deltas = [tf.cast(self.deltas[i], dtype) for i in indices]
        else:
            deltas = [
                tf.cast(x - tf.convert_to_tensor(r), dtype) / (scale + self.eps)
                for x, r in zip(before, refs, strict=True)
            ]
        product = self._inner_product(grads, deltas, after, scale)
        new_scale = tf.maximum(self._tune(product), 0.0)
        for i, ref, delta, x, x_new, variable in zip(
            indices, refs, deltas, before, after, variables, strict=True
        ):
            delta = delta + tf.cast(x_new - x, dtype)  # Delta + u_t
            if self.store_delta:
                self.assign(self.deltas[i], delta)
            step = tf.cast(delta * new_scale, variable.dtype)
            self.assign(variable, tf.convert_to_tensor(ref) + step)
        self.assign(self.effective_lr, new_scale * tf.cast(learning_rate, dtype))

    def _copy(self, targets: Sequence[keras.Variable], values: Sequence[tf.Tensor]) -> None:
        """Assigns `values` to `targets` (both branches of the first-update `tf.cond`)."""
        for target, value in zip(targets, values, strict=True):
            self.assign(target, value)

    def _base_step(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> list[tf.Tensor]:
        """Runs the base optimizer's update on `variables` at `learning_rate`, as its own
        `apply` would (LR variable set, decoupled weight decay, `update_step` per
        variable, then `iterations + 1`); returns the weights after it."""
        apply_base_step(self.base_optimizer, grads, variables, learning_rate)
        return [tf.convert_to_tensor(v) for v in variables]

    def _inner_product(
        self,
        grads: Sequence[tf.Tensor],
        deltas: Sequence[tf.Tensor],
        after: Sequence[tf.Tensor],
        scale: tf.Tensor,
    ) -> tf.Tensor:
        """`h = <Delta, g + s_decay * S * ||g|| / (||x'|| + eps) * x'>` over every
        variable, with `x'` the weights after the base step (a scalar)."""
        dtype = self.s.dtype
        grads = [tf.cast(g, dtype) for g in grads]
        after = [tf.cast(x, dtype) for x in after]
        weight_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(x)) for x in after]))
        grad_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
        decay = self.s_decay * scale * grad_norm / (weight_norm + self.eps)
        products = [
            tf.reduce_sum(d * (g + decay * x)) for d, g, x in zip(deltas, grads, after, strict=True)
        ]
        return tf.add_n(products)

    def _tune(self, product: tf.Tensor) -> tf.Tensor:
        """The tuners' update from `h = product`; returns the new `sum_i s_i`."""
        betas = tf.constant(self.betas, self.s.dtype)
        max_product = tf.maximum(betas * self.max_product, tf.abs(product))
        sum_squared = betas * betas * self.sum_squared_products + tf.square(product)
        reward = tf.maximum(betas * self.reward - self.s * product, 0.0)
        wealth = max_product * (self.s_init / len(self.betas)) + reward
        s = wealth / (tf.sqrt(sum_squared) + self.eps)
        self.assign(self.max_product, max_product)
        self.assign(self.sum_squared_products, sum_squared)
        self.assign(self.reward, reward)
        self.assign(self.s, s)
        return tf.reduce_sum(s)

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` and `optimizer/scale` (see the class docstring)."""
        return {
            "optimizer/effective_lr": tf.convert_to_tensor(self.effective_lr),
            "optimizer/scale": tf.reduce_sum(self.s),
        }

    def get_config(self) -> dict[str, Any]:
        base = self.base_spec or keras.optimizers.serialize(self.base_optimizer)
        return {
            **super().get_config(),
            "base_optimizer": base,
            "s_decay": self.s_decay,
            "betas": list(self.betas),
            "s_init": self.s_init,
            "eps": self.eps,
            "store_delta": self.store_delta,
        }


def _fill(value: float) -> Callable[..., tf.Tensor]:
    """An initializer filling a variable with `value` in the variable's own dtype."""
    return lambda shape, dtype=None: tf.fill(shape, tf.constant(value, dtype))


def make_base_optimizer(
    spec: BaseSpec,
    learning_rate: float,
    owner: str = "Mechanic",
    authors: str = "mechanize",
    page: str = "mechanic",
) -> keras.optimizers.Optimizer:
    """The base optimizer of `<owner>.base_optimizer` (a short name, a class or factory
    taking `learning_rate`, or a serialized optimizer), at `learning_rate`. `owner` is
    the wrapping class (Mechanic, ScheduleFreeWrapper), named in the errors; `authors`
    the authors' wrapper and `page` its parity page (`docs/parity/<page>.md`), named in
    the warning for Keras's momentum."""
    from lrresearch.optimizers import OPTIMIZERS  # here: the package imports this module

    if isinstance(spec, str):
        if spec not in OPTIMIZERS:
            raise ValueError(
                f"{owner}.base_optimizer must be one of {sorted(OPTIMIZERS)} or an "
                f"optimizer class such as @keras.optimizers.Adam, got {spec!r}"
            )
        base = OPTIMIZERS[spec](learning_rate)
    elif isinstance(spec, dict):
        base = keras.optimizers.deserialize(copy.deepcopy(spec))  # it edits its argument
    elif isinstance(spec, keras.optimizers.Optimizer):
        raise ValueError(
            f"{owner}.base_optimizer must be a class or a short name, not an instance "
            "(write `@keras.optimizers.Adam`, without the parentheses)"
        )
    elif callable(spec):
        base = spec(learning_rate=learning_rate)
    else:
        raise ValueError(
            f"{owner}.base_optimizer must be a short name or an optimizer class, got {spec!r}"
        )
    _check_base(base, owner)
    if isinstance(base, keras.optimizers.SGD) and base.momentum:
        message = keras_momentum_warning(spec, base, owner, authors, page)
        warnings.warn(message, BaseFormWarning, stacklevel=3)
    base.learning_rate = learning_rate
    return base


def apply_base_step(
    base: keras.optimizers.Optimizer,
    grads: Sequence[tf.Tensor],
    variables: Sequence[keras.Variable],
    learning_rate: tf.Tensor,
) -> None:
    """Runs `base`'s update on `variables` at `learning_rate`, as its own `apply` would:
    LR variable set, decoupled weight decay, `update_step` per variable, then
    `iterations + 1`. TF ops."""
    base.assign(base.learning_rate, learning_rate)
    base._apply_weight_decay(variables)  # AdamW's; nothing for the others
    for grad, variable in zip(grads, variables, strict=True):
        base.update_step(grad, variable, base.learning_rate)
    base.assign_add(base.iterations, 1)  # Adam's bias correction reads it


class BaseFormWarning(UserWarning):
    """A base optimizer that is not the form the authors' code wraps (one line on the
    CLI, as lrresearch's own warnings are)."""


def keras_momentum_warning(
    spec: BaseSpec, base: keras.optimizers.SGD, owner: str, authors: str, page: str
) -> str:
    """The warning for a base of Keras's momentum SGD: not the authors' torch form
    (`owner`, `authors`, `page`: see `make_base_optimizer`)."""
    given = repr(spec) if isinstance(spec, str) else "@keras.optimizers.SGD"
    mu = base.momentum
    nesterov = " and `MomentumSGD.nesterov = True`" if base.nesterov else ""
    return (
        f"{owner}.base_optimizer = {given} is Keras's SGD(momentum={mu}), whose velocity "
        f"holds the LR (m = mu*m - lr*g), not the torch.optim.SGD(momentum={mu}) of the "
        f"authors' {authors} (buf = mu*buf + g): once the LR changes per batch the two "
        f"differ (docs/parity/{page}.md); for the authors' form set "
        f"`{owner}.base_optimizer = @MomentumSGD` with `MomentumSGD.momentum = {mu}`"
        f"{nesterov}"
    )


def _check_base(base: Any, owner: str) -> None:
    """Raises unless `base` is a Keras optimizer whose `update_step` is its whole update."""
    if not isinstance(base, keras.optimizers.Optimizer):
        raise ValueError(f"{owner}.base_optimizer must build a Keras optimizer, got {base!r}")
    if isinstance(base, WholeStepOptimizer):
        raise ValueError(
            f"{owner}.base_optimizer must be a per-variable optimizer (SGD, Adam, ...), got "
            f"{type(base).__name__}, which updates every variable at once"
        )
    if not isinstance(base.learning_rate, keras.Variable):
        raise ValueError(
            f"{owner}.base_optimizer must have a float learning_rate ({owner} sets it "
            f"every batch), got {base.learning_rate!r}"
        )
    for option in _UNSUPPORTED_BASE_OPTIONS:
        value = getattr(base, option, None)
        if value:
            raise ValueError(
                f"{owner}.base_optimizer must not set {option} (got {value!r}): "
                f"{owner} calls its update_step only; set clipping on {owner} itself"
            )
