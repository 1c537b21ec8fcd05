"""Parameter-free step sizes from the distance travelled: DoG, DoWG, D-Adaptation SGD.

Both read the weights' distance from where training started, `||x_t - x_0||` (one
global norm over every trainable variable), so they keep a copy of the initial weights
`x_0` (`build(variables)`: as much memory again as the model's weights, checkpointed
with the controller, so a resumed run measures from the same `x_0`). Each batch they
return the step size of the paper for plain SGD, `x_{t+1} = x_t - lr_t g_t`: exact
with `Trainer.optimizer = 'sgd'` (no momentum, no weight decay). With momentum or Adam
the LR they return scales that optimizer's update instead, which is not the method of
the papers (their update is the gradient itself): `check_optimizer` says so, a warning
for DoG and DoWG, a refusal for D-Adaptation SGD (see each class).

All state lives in `tf.Variable`s; everything is computed in-graph. A batch whose
gradient norm is NaN/Inf adds nothing to the sums (the trainer's guard skips its
update), so one bad batch does not poison the step size for the rest of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gin
import tensorflow as tf

from lrresearch.checks import check_interval, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.signals import Signals

if TYPE_CHECKING:
    import keras

STATE_DTYPE = tf.float64  # D-Adaptation's scalars, as the authors' Python floats


def _require_built(owner: str, state: Sequence[tf.Variable], signals: Signals) -> None:
    """Raises unless `build(variables)` made one state variable per gradient."""
    if not state or len(state) != len(signals.grads):
        raise ValueError(
            f"{owner} needs the model's variables: the trainer calls build(variables); "
            "in a custom loop call it yourself once, before training"
        )


def _distance(watched: Sequence[tf.Variable], initial: Sequence[tf.Variable]) -> tf.Tensor:
    """`||x - x_0||` over every variable (float32 scalar)."""
    squares = [
        tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(w) - x0, tf.float32)))
        for w, x0 in zip(watched, initial, strict=True)
    ]
    return tf.sqrt(tf.add_n(squares))


def sgd_momentum(optimizer: Any) -> tuple[str, float] | None:
    """`("keras", mu)` for Keras's `SGD(momentum=mu)`, `("torch", mu)` for
    `MomentumSGD(momentum=mu)`, both without Nesterov and weight decay; else None."""
    import keras

    from lrresearch.optimizers import MomentumSGD

    if getattr(optimizer, "nesterov", False):
        return None
    if isinstance(optimizer, MomentumSGD) and not optimizer.l2_weight_decay:
        return "torch", float(optimizer.momentum)
    if isinstance(optimizer, keras.optimizers.SGD) and not optimizer.weight_decay:
        return "keras", float(optimizer.momentum)
    return None


def describe_optimizer(optimizer: Any) -> str:
    """`optimizer` as a reader writes it: `Keras's SGD(momentum=0.9)`, `Adam`, ..."""
    import keras

    from lrresearch.optimizers import MomentumSGD

    kind = type(optimizer).__name__
    arguments = [
        f"{name}={getattr(optimizer, attribute)!r}"
        for name, attribute in (
            ("momentum", "momentum"),
            ("nesterov", "nesterov"),
            (
                "weight_decay",
                "l2_weight_decay" if isinstance(optimizer, MomentumSGD) else "weight_decay",
            ),
        )
        if getattr(optimizer, attribute, None)
    ]
    owner = "Keras's " if isinstance(optimizer, keras.optimizers.SGD) else ""
    return f"{owner}{kind}({', '.join(arguments)})" if arguments else f"{owner}{kind}"


def not_plain_sgd(method: str, optimizer: Any) -> str | None:
    """The warning for a plain-SGD rule (`PlainSGDRule`) on an optimizer that is not
    plain SGD, or None."""
    form = sgd_momentum(optimizer)
    if form is not None and form[1] == 0.0:
        return None
    if form is not None and form[0] == "keras":
        becomes = (
            "its step sizes enter the velocity (m = mu*m - lr*g), so each update mixes "
            "the step sizes of past batches"
        )
    elif form is not None:
        becomes = "its step size scales the momentum buffer (buf = mu*buf + g)"
    else:
        becomes = f"its step size scales {type(optimizer).__name__}'s update"
    return (
        f"{method} with Trainer.optimizer = {describe_optimizer(optimizer)} is not {method}: "
        f"{becomes} instead of the gradient itself (the method's update, which has no "
        f"momentum or weight decay); for {method} set `Trainer.optimizer = 'sgd'`"
    )


class PlainSGDRule(Controller):
    """A step size for plain SGD (DoG, DoWG, NGN, AdaGrad-Norm): on another optimizer it
    warns once (`check_optimizer`, then `run_warnings`) rather than refuse. The rule
    stays well defined, a variant one may study (DoG's step size on Adam's update),
    only not the paper's method; the warning names what it becomes and `'sgd'`."""

    method = ""  # "DoG", "NGN", ..., for the warning

    def __init__(self, name: str | None = None):
        super().__init__(name=name)
        self.optimizer_warning: str | None = None

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Keeps a warning (returned by `run_warnings`) unless `optimizer` is plain SGD."""
        self.optimizer_warning = not_plain_sgd(self.method, optimizer)

    def run_warnings(self, steps: int | None) -> list[str]:
        del steps
        return [self.optimizer_warning] if self.optimizer_warning else []


class _DistanceController(PlainSGDRule):
    """Keeps `x_0` and the watched variables (shared by DoG and DoWG). On another
    optimizer than plain SGD they warn (`PlainSGDRule`): the rule reads the weights the
    optimizer really moved (`||x_t - x_0||`) and the loss's gradients."""

    def __init__(self, name: str | None = None):
        super().__init__(name=name)
        self.watched: list[tf.Variable] = []
        self.initial: list[tf.Variable] = []
        self.initial_norm = tf.Variable(0.0, trainable=False, name="initial_norm")

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Watches the model's trainable variables and copies them as `x_0` (called once
        by the trainer, before the first batch, so `x_0` is the initial weights)."""
        self.watched = list(variables)
        self.initial = [
            tf.Variable(tf.convert_to_tensor(v), trainable=False, name="x0") for v in variables
        ]
        squares = [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in self.initial]
        self.initial_norm.assign(tf.sqrt(tf.add_n(squares)))

    def _check_built(self, signals: Signals) -> None:
        _require_built(type(self).__name__, self.watched, signals)


@gin.configurable
class DoGController(_DistanceController):
    """DoG, Distance over Gradients: `lr_t = c * rbar_t / sqrt(G_t)`, where
    `rbar_t = max(r_eps, max_{i<=t} ||x_i - x_0||)` and `G_t = eps + sum_{i<=t} ||g_i||^2`.

    As the authors' `DoG` optimizer (the global version, every variable as one vector):
    `r_eps = reps_rel * (1 + ||x_0||)`, so the first step is `reps_rel * (1 + ||x_0||) /
    sqrt(||g_0||^2 + eps)`; with `init_eta` the first LR is `init_eta` instead and
    `r_eps` is 0. The gradient is the loss's (`Signals.grads`, before clipping), as the
    authors' with `weight_decay = 0`. Exact with plain SGD; on another optimizer it
    warns once (see `_DistanceController`). The authors stress that DoG needs iterate averaging
    for its best results (their polynomial averaging): without it the LR does not decay.

    Logs `controller/distance` (`||x_t - x_0||`), `controller/rbar` and
    `controller/grad_sq_sum` (`G_t`).

    Args:
      reps_rel: `r_eps` relative to `1 + ||x_0||` (1e-6; the authors suggest 1e-4 for a
        model with batch normalization).
      c: the paper's `c`, the authors' `lr` (1.0; they advise against changing it).
      eps: added to the sum of squared gradient norms.
      init_eta: if set, the first LR (and `r_eps = 0`).

    Examples:
      Trainer.controller = @DoGController()
      Trainer.optimizer = 'sgd'                     # DoG's own update: plain SGD
      DoGController.reps_rel = 1e-6

    References:
      Ivgi, Hinder, Carmon. "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
      Size Schedule." ICML 2023; the authors' code, github.com/formll/dog
      (`src/dog/dog.py`, class `DoG`); optax's `optax.contrib.dog`.
    """

    method = "DoG"

    def __init__(
        self,
        reps_rel: float = 1e-6,
        c: float = 1.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "DoGController"
        check_positive(owner, c=c, eps=eps)
        if init_eta is None:
            check_positive(owner, reps_rel=reps_rel)
        else:
            check_positive(owner, init_eta=init_eta)
        self.reps_rel = 0.0 if init_eta is not None else float(reps_rel)
        self.c, self.eps = float(c), float(eps)
        self.init_eta = None if init_eta is None else float(init_eta)
        # The optimizer starts at the first step's LR only once x_0 is known; Signals.lr
        # at step 0 is this placeholder, which DoG never reads.
        self.initial_lr = self.init_eta or 0.0
        self.rbar = tf.Variable(0.0, trainable=False, name="rbar")
        self.grad_sq_sum = tf.Variable(self.eps, trainable=False, name="grad_sq_sum")
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="seen")

    def build(self, variables: Sequence[tf.Variable]) -> None:
        super().build(variables)
        self.rbar.assign(self.reps_rel * (1.0 + self.initial_norm))

    def compute(self, signals: Signals) -> ControllerOutput:
        self._check_built(signals)
        distance = _distance(self.watched, self.initial)
        rbar = tf.maximum(self.rbar, distance)
        norm = tf.cast(signals.global_norm, tf.float32)
        finite = tf.math.is_finite(norm)
        grad_sq_sum = self.grad_sq_sum + tf.where(finite, tf.square(norm), 0.0)
        lr = self.c * rbar / tf.sqrt(grad_sq_sum)
        if self.init_eta is not None:
            lr = tf.where(self.seen == 0, tf.constant(self.init_eta, tf.float32), lr)
        self.rbar.assign(rbar)
        self.grad_sq_sum.assign(grad_sq_sum)
        self.seen.assign_add(1)
        diagnostics = {"distance": distance, "rbar": rbar, "grad_sq_sum": grad_sq_sum}
        return ControllerOutput(lr, diagnostics)


@gin.configurable
class DoWGController(_DistanceController):
    """DoWG, Distance over Weighted Gradients: `lr_t = rbar_t^2 / (sqrt(v_t) + eps)`,
    where `rbar_t^2 = max(rbar_{t-1}^2, ||x_t - x_0||^2)` and `v_t = v_{t-1} + rbar_t^2
    ||g_t||^2`.

    As `optax.contrib.dowg`: `rbar_{-1}^2 = init_estim_sq_dist` (default `eps`), `v_{-1}
    = 0`. The gradients are weighted by the squared distance, so early small steps
    count less than in DoG; the paper shows it universal (adapting to smooth and
    nonsmooth problems) without a log factor. Exact with plain SGD; on another optimizer
    it warns once (see `_DistanceController`).

    Logs `controller/distance` (`||x_t - x_0||`), `controller/rbar_sq` and
    `controller/weighted_grad_sq_sum` (`v_t`).

    Args:
      init_estim_sq_dist: initial guess of the squared distance to the solution
        (default: `eps`).
      eps: added to the denominator (1e-4, as optax).

    Examples:
      Trainer.controller = @DoWGController()
      Trainer.optimizer = 'sgd'                     # DoWG's own update: plain SGD

    References:
      Khaled, Mishchenko, Jin. "DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method." NeurIPS 2023; optax's `optax.contrib.dowg`
      (`optax/contrib/_dog.py`).
    """

    method = "DoWG"

    def __init__(
        self,
        init_estim_sq_dist: float | None = None,
        eps: float = 1e-4,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "DoWGController"
        check_positive(owner, eps=eps)
        if init_estim_sq_dist is not None:
            check_positive(owner, init_estim_sq_dist=init_estim_sq_dist)
        self.eps = float(eps)
        self.init_estim_sq_dist = (
            self.eps if init_estim_sq_dist is None else float(init_estim_sq_dist)
        )
        self.initial_lr = 0.0  # placeholder: DoWG never reads Signals.lr
        self.rbar_sq = tf.Variable(self.init_estim_sq_dist, trainable=False, name="rbar_sq")
        self.weighted_grad_sq_sum = tf.Variable(0.0, trainable=False, name="weighted_sum")

    def compute(self, signals: Signals) -> ControllerOutput:
        self._check_built(signals)
        distance = _distance(self.watched, self.initial)
        rbar_sq = tf.maximum(self.rbar_sq, tf.square(distance))
        norm = tf.cast(signals.global_norm, tf.float32)
        finite = tf.math.is_finite(norm)
        weighted = self.weighted_grad_sq_sum + tf.where(finite, rbar_sq * tf.square(norm), 0.0)
        lr = rbar_sq / (tf.sqrt(weighted) + self.eps)
        self.rbar_sq.assign(rbar_sq)
        self.weighted_grad_sq_sum.assign(weighted)
        diagnostics = {"distance": distance, "rbar_sq": rbar_sq, "weighted_grad_sq_sum": weighted}
        return ControllerOutput(lr, diagnostics)


@gin.configurable
class DAdaptSGDController(Controller):
    """D-Adaptation for SGD: `lr_k = (1 - momentum) * d_k * c / ||g_0||`, with `d` a
    running lower bound of the distance to the solution.

    As the authors' `DAdaptSGD`, operation by operation: with `dlr_k = d_k c / ||g_0||`,
    `s` accumulates the steps (`s += dlr_k g_k`), `gsq_weighted += dlr_k^2 ||g_k||^2`,
    and after each step `d = max(d, min(d_hat, d * growth_rate))` with `d_hat =
    (||s||^2 - gsq_weighted) / ||s||`, starting from `d0`. The authors' momentum form
    puts the weights at an exponential average of `z = x_0 - s`, `x_{k+1} = mu x_k +
    (1 - mu) z_{k+1}`, which is exactly Keras's heavy ball (`m = mu*m - lr*g; x += m`)
    at `lr_k = (1 - mu) dlr_k`: so `momentum = mu` with `Trainer.optimizer =
    @keras.optimizers.SGD` and `keras.optimizers.SGD.momentum = mu` (`'momentum'` for
    0.9) is the authors' `DAdaptSGD(momentum=mu)`, and `momentum = 0` with `'sgd'` is
    their default. The gradient is the loss's (`Signals.grads`, the authors' with
    `weight_decay = 0`). `s` is one more copy of the weights (checkpointed), in the
    variables' dtype as the authors' state; the scalars (`d`, `gsq_weighted`,
    `||g_0||`) are float64, as the authors' Python floats (in float32, `growth_rate =
    1.02` compounds as 1.0199999809 per capped step, 2e-5 off after 1,000), and the LR
    is cast to float32 once.

    `check_optimizer` refuses any other optimizer, rather than warn: `d` is computed
    from `s`, the path of the authors' update, not from the weights, so on another
    update (Adam, PyTorch's momentum, Keras's momentum other than `momentum`, Nesterov,
    weight decay) `d` bounds the distance of a path the weights never took (Keras's
    SGD(momentum=0.9) under `momentum = 0` takes 10x the authors' steps). The authors'
    Adam form is `Trainer.optimizer = @DAdaptAdam`. Checkpoints of D-Adapt SGD runs
    written before the state was float64 do not restore (a `ResumeError` says so).

    Logs `controller/d`, `controller/d_hat` and `controller/s_norm` (`||s||`).

    Args:
      c: the authors' `lr` (1.0), a multiplier of the adapted step.
      d0: the initial `d` (1e-6).
      growth_rate: the most `d` may grow in one step, a factor (None: no limit, the
        authors' `inf`).
      momentum: the authors' `momentum` in [0, 1) (0, their default); it must equal
        the momentum of Keras's SGD, `Trainer.optimizer`.

    Examples:
      Trainer.controller = @DAdaptSGDController()
      Trainer.optimizer = 'sgd'                     # the authors' DAdaptSGD(momentum=0)

      DAdaptSGDController.momentum = 0.9
      Trainer.optimizer = 'momentum'                # Keras's SGD(momentum=0.9): theirs

    References:
      Defazio, Mishchenko. "Learning-Rate-Free Learning by D-Adaptation." ICML 2023;
      the authors' code, github.com/facebookresearch/dadaptation
      (`dadaptation/dadapt_sgd.py`, class `DAdaptSGD`).
    """

    def __init__(
        self,
        c: float = 1.0,
        d0: float = 1e-6,
        growth_rate: float | None = None,
        momentum: float = 0.0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        owner = "DAdaptSGDController"
        check_positive(owner, c=c, d0=d0)
        if growth_rate is not None:
            check_positive(owner, growth_rate=growth_rate)
        fix = "the authors' momentum range (0: no momentum)"
        check_interval(owner, "momentum", momentum, "[0, 1)", fix)
        self.c, self.d0, self.momentum = float(c), float(d0), float(momentum)
        self.growth_rate = None if growth_rate is None else float(growth_rate)
        self.initial_lr = 0.0  # placeholder: the first LR needs the first gradient
        # tf.constant of a Python float in float64 is exact (tf.cast would round it
        # through float32).
        self.d = tf.Variable(tf.constant(self.d0, STATE_DTYPE), trainable=False, name="d")
        zero = tf.constant(0.0, STATE_DTYPE)
        self.gsq_weighted = tf.Variable(zero, trainable=False, name="gsq_weighted")
        self.g0_norm = tf.Variable(zero, trainable=False, name="g0_norm")
        self.steps: list[tf.Variable] = []

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Creates `s`, the sum of the steps, one zero copy per variable (its dtype)."""
        self.steps = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="s") for v in variables
        ]

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Refuses every optimizer but Keras's SGD with this controller's momentum
        (and MomentumSGD without momentum, plain SGD too)."""
        form = sgd_momentum(optimizer)
        if form is not None and form[1] == self.momentum and (form[0] == "keras" or not form[1]):
            return
        owner, mu = "DAdaptSGDController", self.momentum
        want = "'sgd'" if not mu else f"@keras.optimizers.SGD with SGD.momentum = {mu}"
        if form is not None and form[0] == "keras":  # another momentum
            fix = (
                f"set `{owner}.momentum = {form[1]}` for the authors' DAdaptSGD(momentum="
                f"{form[1]}), or `Trainer.optimizer = {want}` for momentum {mu}"
            )
        else:
            fix = f"use `Trainer.optimizer = {want}`; for Adam, `@DAdaptAdam` is theirs"
        raise ValueError(
            f"Trainer.optimizer must be Keras's SGD with momentum {mu} (no Nesterov, no "
            f"weight decay) under {owner}(momentum={mu}), got {describe_optimizer(optimizer)}: "
            f"d is estimated from the path of the authors' update (their momentum form is "
            f"Keras's heavy ball at LR (1 - momentum) d c / ||g_0||), which this "
            f"optimizer's weights do not follow; {fix}"
        )

    def compute(self, signals: Signals) -> ControllerOutput:
        _require_built("DAdaptSGDController", self.steps, signals)
        grads = [tf.convert_to_tensor(g) for g in signals.grads]
        # Sums in the variable's dtype, added up in float64 (the authors' `.item()`).
        g_sq = tf.add_n([_sum64(g * g) for g in grads])
        # The guard skips a batch whose loss or gradient norm is not finite: so does `s`.
        finite = tf.math.is_finite(g_sq) & tf.math.is_finite(signals.global_norm)
        finite &= tf.math.is_finite(tf.cast(signals.loss, tf.float32))
        g0_norm = tf.where(self.g0_norm > 0.0, self.g0_norm, tf.where(finite, tf.sqrt(g_sq), 0.0))
        dlr = self.d * self.c / g0_norm
        use = finite & (g0_norm > 0.0)
        for g, s in zip(grads, self.steps, strict=True):
            step = tf.cast(tf.where(use, dlr, 0.0), s.dtype)
            s.assign_add(tf.where(use, step * g, tf.zeros_like(g)))
        sk_sq = tf.add_n([_sum64(tf.square(s)) for s in self.steps])
        gsq_weighted = self.gsq_weighted + tf.where(use, dlr * dlr * g_sq, 0.0)
        d_hat = tf.math.divide_no_nan(sk_sq - gsq_weighted, tf.sqrt(sk_sq))
        bound = d_hat if self.growth_rate is None else tf.minimum(d_hat, self.d * self.growth_rate)
        d = tf.where(use, tf.maximum(self.d, bound), self.d)
        self.g0_norm.assign(g0_norm)
        self.gsq_weighted.assign(gsq_weighted)
        self.d.assign(d)
        lr = tf.cast(dlr * (1.0 - self.momentum), tf.float32)
        diagnostics = {"d": d, "d_hat": d_hat, "s_norm": tf.sqrt(sk_sq)}
        diagnostics = {k: tf.cast(v, tf.float32) for k, v in diagnostics.items()}
        return ControllerOutput(lr, diagnostics)


def _sum64(x: tf.Tensor) -> tf.Tensor:
    """A sum in the tensor's dtype, then as float64 (the authors' `.sum().item()`)."""
    return tf.cast(tf.reduce_sum(x), STATE_DTYPE)
