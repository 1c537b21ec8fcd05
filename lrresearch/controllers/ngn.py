"""Step sizes from the batch loss and the gradient norm alone: NGN and AdaGrad-Norm.

Both read only `Signals.loss` and `Signals.global_norm` (the loss's gradient, before
any clipping), so they need no copy of the weights and cost two scalar ops per batch.
Each returns the step size of its paper for plain SGD, `x_{t+1} = x_t - lr_t g_t`:
exact with `Trainer.optimizer = 'sgd'`. On another optimizer the LR scales that
optimizer's update instead, a variant rather than the method: `check_optimizer` warns
once, as for DoG (the rule stays well defined, since it reads only the loss and the
gradient). NGN's momentum form, NGN-M, is Keras's heavy ball at a scaled NGN step
(`NGNController(momentum=beta)`, which then refuses any other optimizer).

The scalar arithmetic is float64 and the LR is rounded to float32 once; AdaGrad-Norm's
sum of squared gradient norms is a float64 variable (in float32 a sum of ~1e5 batches
stops taking in terms 1e-7 of its size), checkpointed with the controller. A batch whose
loss or gradient norm is NaN/Inf adds nothing to the sum and returns a NaN LR, which the
trainer's guard sees and skips.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gin
import tensorflow as tf

from lrresearch.checks import check_interval, check_nonnegative, check_number, check_positive
from lrresearch.controllers.base import ControllerOutput
from lrresearch.controllers.parameter_free import PlainSGDRule, describe_optimizer, sgd_momentum
from lrresearch.controllers.signals import Signals
from lrresearch.optimizers.float64_state import STATE_DTYPE

if TYPE_CHECKING:
    import keras


def _scalars64(signals: Signals) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(loss, ||g||^2, finite)`: the loss and squared gradient norm as float64 scalars,
    and whether both are finite."""
    loss = tf.cast(signals.loss, STATE_DTYPE)
    sq_norm = tf.square(tf.cast(signals.global_norm, STATE_DTYPE))
    return loss, sq_norm, tf.math.is_finite(loss) & tf.math.is_finite(sq_norm)


@gin.configurable
class NGNController(PlainSGDRule):
    """NGN, the non-negative Gauss-Newton step size:
    `lr_t = c / (1 + c ||g_t||^2 / (2 (f_t - lb)))`, with `f_t` the batch loss.

    The authors' `NGN` optimizer (step-back's `stepback/optim/ngn.py`) at `lb = 0`,
    operation by operation: `denom = 1 + lr / (2 loss) ||g||^2`, `gamma = lr / denom`,
    then plain SGD at `gamma`. It never exceeds `c` and shrinks where the gradient is
    large against the loss (a warmup at the start, a decay near a minimum of the loss),
    and it needs no lower bound but `f >= 0`. `lb` shifts the loss (NGN on `f - lb`,
    which the reference gives when handed `loss - lb`): set it for a loss that can be
    negative; 0, the paper's, for cross-entropy and squared error.

    Edge cases (the reference divides by `2 loss` as it is): a zero gradient gives `c`;
    `f_t - lb <= 0` gives 0 (the reference's 0 at `f = 0` with a nonzero gradient, the
    limit of the formula; the reference returns NaN at `f = 0` with a zero gradient and
    a negative or unbounded step below 0, which we do not follow: no step, the loss is
    at its bound). A NaN/Inf loss or gradient gives a NaN LR, which the guard skips.

    With `momentum = beta > 0` it is NGN-M (Islamov et al. 2025, Algorithm 1), the step
    size in a heavy ball: `x_{k+1} = x_k - (1 - beta) gamma_k g_k + beta (x_k - x_{k-1})`,
    `gamma_k` NGN's step size above (from the current gradient). That is exactly Keras's
    SGD momentum (`v = beta v - lr g; x += v`, `v_0 = 0`) at `lr_k = (1 - beta) gamma_k`,
    which this controller then returns: NGN-M is `momentum = beta` with
    `Trainer.optimizer = @keras.optimizers.SGD` and `keras.optimizers.SGD.momentum = beta`
    (`'momentum'` for 0.9), and `check_optimizer` refuses any other optimizer (PyTorch's
    momentum `MomentumSGD`, whose buffer sums past gradients undamped, included).

    Exact with plain SGD (`Trainer.optimizer = 'sgd'`) at `momentum = 0`; on another
    optimizer it then warns once (the LR scales that optimizer's update, a variant).

    Logs `controller/sq_grad_norm` (`||g_t||^2`) and `controller/gap` (`f_t - lb`).

    Args:
      lr: the paper's `sigma` (`c`), the authors' `lr` (0.1, step-back's default): the
        largest step size, given for a zero gradient.
      lb: a lower bound of the batch loss (0 for cross-entropy and squared error).
      momentum: NGN-M's `beta` in [0, 1) (0: NGN); it must equal the momentum of
        Keras's SGD, `Trainer.optimizer`.

    Examples:
      Trainer.controller = @NGNController()
      Trainer.optimizer = 'sgd'                     # NGN's own update: plain SGD
      NGNController.lr = 1.0

      NGNController.momentum = 0.9                  # NGN-M
      Trainer.optimizer = 'momentum'                # Keras's SGD(momentum=0.9)

      >>> from lrresearch.controllers import NGNController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = NGNController(lr=1.0)
      >>> round(float(c.compute(make_signals(0, loss=0.5, global_norm=1.0)).lr), 4)
      0.5

    References:
      Orvieto, Xiao. "An Adaptive Stochastic Gradient Method with Non-negative
      Gauss-Newton Stepsizes." arXiv 2407.04358, 2024; the authors' code,
      github.com/fabian-sp/step-back (`stepback/optim/ngn.py`, class `NGN`) and
      github.com/aorvieto/NGN (`train.py`). NGN-M: Islamov, Ajroldi, Orvieto, Lucchi.
      "Enhancing Optimizer Stability: Momentum Adaptation of The NGN Step-size." arXiv
      2508.15071, 2025 (Algorithm 1).
    """

    method = "NGN"

    def __init__(
        self, lr: float = 0.1, lb: float = 0.0, momentum: float = 0.0, name: str | None = None
    ):
        super().__init__(name=name)
        owner = "NGNController"
        check_positive(owner, lr=lr)
        check_number(owner, "lb", lb)
        check_interval(owner, "momentum", momentum, "[0, 1)", "NGN-M's beta (0: NGN)")
        self.lr, self.lb, self.momentum = float(lr), float(lb), float(momentum)
        self.initial_lr = (1.0 - self.momentum) * self.lr
        self.peak_lr = self.initial_lr  # never exceeded: `known_peak_lr`

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """At `momentum = 0`: a warning unless plain SGD. NGN-M: refuses every optimizer
        but Keras's SGD with this momentum (no Nesterov, no weight decay)."""
        if not self.momentum:
            super().check_optimizer(optimizer)
            return
        form = sgd_momentum(optimizer)
        if form is not None and form == ("keras", self.momentum):
            return
        beta = self.momentum
        raise ValueError(
            f"Trainer.optimizer must be Keras's SGD with momentum {beta} (no Nesterov, no "
            f"weight decay) under NGNController(momentum={beta}), NGN-M, got "
            f"{describe_optimizer(optimizer)}: NGN-M is Keras's heavy ball at LR (1 - beta) "
            f"* gamma_k; set `Trainer.optimizer = @keras.optimizers.SGD` with "
            f"`keras.optimizers.SGD.momentum = {beta}` (or 'momentum' for 0.9), or "
            f"`NGNController.momentum = 0` for NGN with 'sgd'"
        )

    def compute(self, signals: Signals) -> ControllerOutput:
        loss, sq_norm, finite = _scalars64(signals)
        gap = loss - self.lb
        # The reference's `lr / (1 + lr / (2 gap) ||g||^2)`, `lr / (2 gap)` taken only
        # where gap > 0 (no inf/NaN traced); a zero gradient gives lr, a gap <= 0 gives 0.
        denominator = 1.0 + self.lr / (2.0 * tf.where(gap > 0.0, gap, 1.0)) * sq_norm
        lr = tf.where(gap > 0.0, self.lr / denominator, tf.zeros_like(gap))
        if self.momentum:
            lr = (1.0 - self.momentum) * lr
        lr = tf.where(finite, lr, tf.constant(float("nan"), STATE_DTYPE))
        diagnostics = {"sq_grad_norm": sq_norm, "gap": gap}
        return ControllerOutput(
            tf.cast(lr, tf.float32), {k: tf.cast(v, tf.float32) for k, v in diagnostics.items()}
        )


@gin.configurable
class AdaGradNormController(PlainSGDRule):
    """AdaGrad-Norm: `lr_t = eta / b_t` with `b_t^2 = b0^2 + sum_{s<=t} ||g_s||^2`.

    The paper's Algorithm (AdaGrad-Norm): `b_{j+1}^2 = b_j^2 + ||G(x_j)||^2`, then
    `x_{j+1} = x_j - eta / b_{j+1} G(x_j)`: the current gradient is in the sum before
    the step, so the first step is `eta / sqrt(b0^2 + ||g_0||^2)`. One scalar for the
    whole model (AdaGrad's per-coordinate sums collapsed to a norm). `b_t^2` is a
    float64 variable, checkpointed: a resumed run continues the same sum.

    `b0 = 0` is allowed (the paper asks `b0 > 0`): while `b_t = 0` (no nonzero gradient
    yet) the LR is 0, not `eta / 0` (the step `lr_t g_t` is 0 either way). A batch
    whose loss or gradient norm is NaN/Inf adds nothing and gives a NaN LR (skipped).

    Exact with plain SGD (`Trainer.optimizer = 'sgd'`); on another optimizer it warns
    once (the LR then scales that optimizer's update).

    Logs `controller/b_sq` (`b_t^2`).

    Args:
      lr: the paper's `eta` (1.0).
      b0: the initial `b_0` (0.1: `b0^2 = 1e-2`, as in Orvieto and Xiao's code), >= 0.

    Examples:
      Trainer.controller = @AdaGradNormController()
      Trainer.optimizer = 'sgd'                     # AdaGrad-Norm's update: plain SGD
      AdaGradNormController.lr = 1.0
      AdaGradNormController.b0 = 0.1

      >>> from lrresearch.controllers import AdaGradNormController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = AdaGradNormController(lr=1.0, b0=0.0)
      >>> round(float(c.compute(make_signals(0, loss=1.0, global_norm=4.0)).lr), 4)
      0.25

    References:
      Ward, Wu, Bottou. "AdaGrad Stepsizes: Sharp Convergence Over Nonconvex
      Landscapes." ICML 2019; JMLR 21(219), 2020 (Algorithm AdaGrad-Norm).
    """

    method = "AdaGrad-Norm"

    def __init__(self, lr: float = 1.0, b0: float = 0.1, name: str | None = None):
        super().__init__(name=name)
        owner = "AdaGradNormController"
        check_positive(owner, lr=lr)
        check_nonnegative(owner, b0=b0)
        self.lr, self.b0 = float(lr), float(b0)
        self.initial_lr = self.lr / self.b0 if self.b0 > 0 else 0.0
        # tf.constant of a Python float in float64 is exact (tf.cast would round it).
        self.b_sq = tf.Variable(tf.constant(self.b0**2, STATE_DTYPE), trainable=False, name="b_sq")

    def compute(self, signals: Signals) -> ControllerOutput:
        _, sq_norm, finite = _scalars64(signals)
        b_sq = self.b_sq + tf.where(finite, sq_norm, tf.zeros_like(sq_norm))
        self.b_sq.assign(b_sq)
        lr = tf.math.divide_no_nan(tf.constant(self.lr, STATE_DTYPE), tf.sqrt(b_sq))
        lr = tf.where(finite, lr, tf.constant(float("nan"), STATE_DTYPE))
        return ControllerOutput(tf.cast(lr, tf.float32), {"b_sq": tf.cast(b_sq, tf.float32)})
