"""`COCOB`: COCOB-Backprop, the coin-betting optimizer without a learning rate
(Orabona and Tommasi, 2017, Algorithm 2).

Each weight coordinate is a gambler betting on the sign of its gradients: the bet (its
distance from the starting weights) is a fraction of the wealth won so far, the fraction
being the gradients' sum over their absolute sum. Per coordinate and elementwise; the
per-batch summaries (`optimizer/effective_lr`, `optimizer/distance`) are norms over every
variable, so it is a `WholeStepOptimizer`. Registered with gin (`Trainer.optimizer =
@COCOB`) and with Keras's serialization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_nonnegative, check_positive
from lrresearch.optimizers.float64_state import float32_summaries
from lrresearch.optimizers.weight_decay import decay_coefficient
from lrresearch.optimizers.whole_step import WholeStepOptimizer

# The per-weight state, in the order `build` creates it (five copies of the weights).
SLOTS = ("max_grad", "abs_grad_sum", "grad_sum", "reward", "bet")


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class COCOB(WholeStepOptimizer):
    """COCOB-Backprop: per-coordinate coin betting; the step size comes from the
    gradients seen so far, with no learning rate to tune.

    Per batch `t`, elementwise on every weight `w` (state from the previous batch; at the
    start `L = eps`, everything else 0), with `lr_t` the LR the controller set:

        g      = lr_t * (grad + weight_decay * w)     (optax's learning_rate and L2 decay)
        L      = max(L, |g|)                          (max_grad)
        G      = G + |g|                              (abs_grad_sum)
        R      = max(R - g * bet, 0)                  (reward: the wealth won)
        theta  = theta + g                            (grad_sum)
        new    = -theta / (L * max(G + L, alpha * L)) * (R + L)
        w      = w - bet + new;   bet = new           (so w = w_1 + bet)

    the authors' TensorFlow code operation by operation (`bet` is their `tilde_w`; optax
    keeps `w_1` instead and reads `bet` as `w - w_1`: the same numbers). The paper's
    Algorithm 2 starts `L` at 0; the authors' code and optax at `eps`, so that a first
    all-zero gradient gives 0, not 0/0.

    The LR: COCOB is invariant to the gradients' scale (times `c`: `L`, `G`, `R` and
    `theta` are all `c` times larger and `new` is unchanged), so a constant LR changes
    nothing but how `eps` compares with the gradients; an LR that changes per batch
    weighs each batch's gradient in the bets (optax's `learning_rate`, "to inject some
    scheduler", and the authors' own `parameterfree.COCOB`'s `lr`). At LR 0 a batch
    changes nothing. Run it with a constant LR of 1.

    Logged every batch (`step_summaries`, after the update, float32):
      `optimizer/effective_lr`: `||w_{t+1} - w_t|| / ||grad + weight_decay * w_t||`
        over every variable: the SGD step size that would move the weights as far as
        this batch did (0 for an all-zero gradient, which moves no weight). COCOB's
        move is not along `-grad`: this is a size, for comparing runs and methods.
      `optimizer/distance`: `||w_{t+1} - w_1||` over every variable, the total bet.

    Memory: five copies of the weights (`L`, `G`, `theta`, `R`, `bet`), in the weights'
    dtype, as the authors' slots (Adam keeps two). Keras's own `weight_decay`
    (decoupled) is not used: `weight_decay` here is optax's, coupled.

    Args:
      learning_rate: a multiplier of the gradients (1.0; see above; >= 0). The trainer
        assigns it every batch.
      alpha: the paper's alpha (100): the bet is at most `1/alpha` of the wealth while
        `G + L < alpha * L`, which keeps the first steps small (> 0).
      eps: the initial `L` (1e-8, the authors' code and optax; > 0).
      weight_decay: L2 decay added to the gradient before the LR, as optax's
        `add_decayed_weights` (0; >= 0). Keras's `exclude_from_weight_decay(var_names=
        [...])` leaves variables out of it, as optax's `mask`.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      In gin (lrresearch/config/gin/strategies/cocob.gin):

        Trainer.optimizer = @COCOB
        Trainer.controller = @ConstantController()
        ConstantController.lr = 1.0     # COCOB's gradient multiplier: 1 is the method

      In Keras: `model.compile(optimizer=COCOB(), ...)`.

      >>> import tensorflow as tf
      >>> w = tf.Variable([1.0, -2.0])
      >>> optimizer = COCOB()
      >>> optimizer.apply([tf.constant([0.5, 0.0])], [w])
      >>> [round(float(x), 4) for x in w.numpy()]  # bet = -g / (g * alpha g) * g = -1/alpha
      [0.99, -2.0]

    References:
      Orabona, Tommasi. "Training Deep Networks without Learning Rates Through Coin
      Betting." NeurIPS 2017 (arXiv:1705.07795), Algorithm 2 (COCOB-Backprop).
      The authors' code, followed here: github.com/bremen79/cocob
      (`optimizer/cocob_optimizer.py`, TensorFlow 1, commit 98e8b46).
      The authors' PyTorch library, github.com/bremen79/parameterfree
      (`parameterfree/cocob.py`, commit 8e130f2: `lr` and `weight_decay` as optax's).
      optax 0.2.8 `optax.contrib.cocob` (learning_rate, weight_decay). All three matched
      by `tools/check_cocob_reference.py` (docs/parity/cocob.md).
    """

    # The decay a controller may set every batch (`lrresearch.optimizers.weight_decay`).
    weight_decay_attribute = "decay_rate"

    def __init__(
        self,
        learning_rate: float = 1.0,
        alpha: float = 100.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        name: str = "COCOB",
        **kwargs: Any,
    ):
        # Keras's own `weight_decay` (decoupled, outside the update) stays None: ours is
        # coupled and inside the update, so the base never sees it.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if isinstance(learning_rate, float | int):  # not a Keras schedule
            check_nonnegative("COCOB", learning_rate=learning_rate)
        check_positive("COCOB", alpha=alpha, eps=eps)
        check_nonnegative("COCOB", weight_decay=weight_decay)
        self.alpha, self.eps, self.decay_rate = float(alpha), float(eps), float(weight_decay)

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates the five slots of `SLOTS` per variable (`max_grad` filled with `eps`,
        the others 0) and the two logged scalars."""
        if self.built:
            return
        super().build(variables)
        initializers = [_fill(self.eps)] + ["zeros"] * (len(SLOTS) - 1)
        slots = self.add_optimizer_variables(variables, list(SLOTS), initializers)
        self.max_grad, self.abs_grad_sum, self.grad_sum, self.reward, self.bet = slots
        self.effective_lr = self.add_variable((), initializer="zeros", name="effective_lr")
        self.distance = self.add_variable((), initializer="zeros", name="distance")

    def update_all(
        self,
        grads: Sequence[tf.Tensor],
        variables: Sequence[keras.Variable],
        learning_rate: tf.Tensor,
    ) -> None:
        """One batch (see the class docstring)."""
        moved, gradient, distance = [], [], []
        for grad, variable in zip(grads, variables, strict=True):
            i = self._get_variable_index(variable)
            w = tf.convert_to_tensor(variable)
            grad = tf.cast(grad, variable.dtype)
            decay = decay_coefficient(self.decay_rate, variable.dtype)
            if decay is not None and self._use_weight_decay(variable):  # optax's mask
                grad = grad + decay * w
            g = tf.cast(learning_rate, variable.dtype) * grad
            abs_g, bet = tf.abs(g), tf.convert_to_tensor(self.bet[i])
            max_grad = tf.maximum(self.max_grad[i], abs_g)
            abs_grad_sum = self.abs_grad_sum[i] + abs_g
            reward = tf.maximum(self.reward[i] - g * bet, 0.0)
            grad_sum = self.grad_sum[i] + g
            denominator = max_grad * tf.maximum(abs_grad_sum + max_grad, max_grad * self.alpha)
            new_bet = -grad_sum / denominator * (reward + max_grad)
            for slot, value in zip(SLOTS, (max_grad, abs_grad_sum, grad_sum, reward, new_bet),
                                   strict=True):  # fmt: skip
                self.assign(getattr(self, slot)[i], value)
            self.assign(variable, w - bet + new_bet)
            moved.append(_squared_norm(new_bet - bet))
            gradient.append(_squared_norm(grad))
            distance.append(_squared_norm(new_bet))
        moved, gradient = tf.sqrt(tf.add_n(moved)), tf.sqrt(tf.add_n(gradient))
        self.assign(self.effective_lr, tf.cast(tf.math.divide_no_nan(moved, gradient), tf.float32))
        self.assign(self.distance, tf.cast(tf.sqrt(tf.add_n(distance)), tf.float32))

    def step_summaries(self) -> dict[str, tf.Tensor]:
        """`optimizer/effective_lr` and `optimizer/distance` (see the class docstring)."""
        return float32_summaries({"effective_lr": self.effective_lr, "distance": self.distance})

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": float(self.decay_rate),
        }


def _fill(value: float) -> Callable[..., tf.Tensor]:
    """An initializer filling a variable with `value` in the variable's own dtype (Keras's
    Constant rounds it through float32: 1e-8 would be 9.99999994e-9 in float64)."""
    return lambda shape, dtype=None: tf.fill(shape, tf.constant(value, dtype))


def _squared_norm(x: tf.Tensor) -> tf.Tensor:
    """`sum(x**2)` in `x`'s dtype, as a float64 scalar."""
    return tf.cast(tf.reduce_sum(tf.square(x)), tf.float64)
