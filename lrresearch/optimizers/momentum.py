"""`MomentumSGD`: PyTorch's momentum SGD, an update that suits an LR changing every batch.

It differs from Keras's `keras.optimizers.SGD(momentum=...)`
only when the LR changes between batches, which is
every batch under a controller. Registered with gin (`Trainer.optimizer = @MomentumSGD`)
and with Keras's serialization (a compiled `ControlledModel` saves and loads it).
"""

from __future__ import annotations

from typing import Any

import gin
import keras
from keras import ops

from lrresearch.checks import check_number


@keras.saving.register_keras_serializable(package="lrresearch")
@gin.configurable
class MomentumSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum: the velocity holds gradients only, never the LR.

    For each variable `w` with gradient `g` and this batch's LR `lr_t`:

        g   = g + weight_decay * w          (L2 penalty, PyTorch's coupled form)
        buf = momentum * buf + g            (buf starts at 0, so buf_1 = g_1)
        d   = g + momentum * buf  if nesterov  else  buf
        w   = w - lr_t * d

    Keras's `SGD(momentum=mu)` instead keeps `m = mu * m - lr * g; w += m`: the
    velocity holds every past gradient already multiplied by the LR of its batch. With
    a constant LR both give the same weights; with an LR that changes every batch they
    do not (Keras applies each gradient at the LR of the batch it came from, PyTorch
    applies the whole buffer at today's LR). This is the form of `torch.optim.SGD`
    (`dampening=0`) and of the hypergradient authors' `SGDHD`, so
    `HypergradientController` reads its direction `d` off the weights exactly.

    Args:
      learning_rate: the LR (a float; the trainer assigns it every batch).
      momentum: the momentum factor `mu` in [0, 1]; 0 is plain SGD.
      nesterov: Nesterov momentum (needs momentum > 0), as `torch.optim.SGD`.
      weight_decay: the L2 coefficient added to the gradient (>= 0), as PyTorch's
        `weight_decay`; unlike Keras's decoupled `weight_decay`, it enters the momentum.
      name: the optimizer's name.
      **kwargs: Keras's other optimizer arguments (`clipnorm`, `global_clipnorm`, ...).

    Examples:
      `Trainer.optimizer = @MomentumSGD` and `MomentumSGD.momentum = 0.9` in a gin file;
      in Keras, `model.compile(optimizer=MomentumSGD(0.1, momentum=0.9), ...)`.

    References:
      PyTorch, `torch.optim.SGD` (https://pytorch.org/docs/stable/generated/torch.optim.SGD.html).
      Sutskever, Martens, Dahl, Hinton. "On the importance of initialization and momentum
      in deep learning." ICML 2013 (the Nesterov form, as PyTorch writes it).
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        name: str = "MomentumSGD",
        **kwargs: Any,
    ):
        # Keras's own `weight_decay` is decoupled; ours is PyTorch's L2, so the base
        # class never sees it.
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for arg, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            check_number("MomentumSGD", arg, value)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MomentumSGD.momentum must be in [0, 1], got {momentum!r}")
        if weight_decay < 0:
            raise ValueError(f"MomentumSGD.weight_decay must be >= 0, got {weight_decay!r}")
        if not isinstance(nesterov, bool):
            raise ValueError(f"MomentumSGD.nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError(
                "MomentumSGD.nesterov must be False when MomentumSGD.momentum = 0, got True "
                "(Nesterov needs a momentum, as in torch.optim.SGD); set a momentum > 0"
            )
        self.momentum, self.nesterov = float(momentum), nesterov
        self.l2_weight_decay = float(weight_decay)

    def build(self, variables: list[keras.Variable]) -> None:
        """Creates one momentum buffer per variable (none when momentum is 0)."""
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = (
            self.add_optimizer_variables(variables, "momentum_buffer") if self.momentum else []
        )

    def update_step(self, gradient: Any, variable: keras.Variable, learning_rate: Any) -> None:
        """One variable's update for this batch (see the class docstring)."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2_weight_decay:
            gradient = ops.add(gradient, ops.multiply(variable, self.l2_weight_decay))
        direction = gradient
        if self.momentum:
            buffer = self.momentum_buffers[self._get_variable_index(variable)]
            new_buffer = ops.add(ops.multiply(buffer, self.momentum), gradient)
            self.assign(buffer, new_buffer)
            direction = (
                ops.add(gradient, ops.multiply(new_buffer, self.momentum))
                if self.nesterov
                else new_buffer
            )
        self.assign_sub(variable, ops.multiply(direction, learning_rate))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.l2_weight_decay,
        }
