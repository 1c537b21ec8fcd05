"""`DecayFollowsLR`: any LR controller, with the optimizer's weight decay following its LR
every batch (AdamC's corrected decay, Defazio 2025; Chou 2025)."""

from __future__ import annotations

import gin
import keras
import tensorflow as tf

from lrresearch.checks import check_nonnegative, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput
from lrresearch.controllers.compose import _Wrapper, check_controller
from lrresearch.controllers.signals import Signals
from lrresearch.optimizers.weight_decay import weight_decay_attribute, weight_decay_value

OWNER = "DecayFollowsLR"


def known_peak_lr(controller: Controller) -> float | None:
    """The largest LR `controller` gives over any run, when its arguments say it
    (`Controller.known_peak_lr`), else None."""
    return controller.known_peak_lr()


@gin.configurable
class DecayFollowsLR(_Wrapper):
    """Any LR controller, with the optimizer's weight decay set every batch to follow
    its LR: `weight_decay_t = weight_decay * (lr_t / reference_lr) ** power`.

    The LR, its diagnostics and any momentum the controller sets pass through
    unchanged; the decay is logged as `optimizer/weight_decay`. It follows the LR of
    the controller it wraps: make it the outermost wrapper (inside a `Warmup` or a
    `Product` it would not see their factor). What the decay does per
    batch depends on what the optimizer multiplies it by. Keras 3 applies it decoupled,
    before the update: `w -= w * weight_decay_t * lr_t` (`_apply_weight_decay` in
    `keras/src/optimizers/base_optimizer.py`), so the EFFECTIVE per-step decay is

        lr_t * weight_decay_t = weight_decay * reference_lr * (lr_t / reference_lr) ** (power + 1)

    * a constant `weight_decay` (no wrapper, AdamW as usual): proportional to `lr_t`;
    * `power = 1`: proportional to `lr_t ** 2`, `weight_decay * lr_t ** 2 /
      reference_lr`, which is AdamC's corrected decay (Defazio 2025: the decay
      coefficient times `lr_t / lr_max`) and the `lambda ~ gamma ** 2` scaling Chou
      2025 derives for a steady weight norm;
    * `power = 2`: proportional to `lr_t ** 3` (a stronger variant, in neither paper).
    At `lr_t = reference_lr` the decay is `weight_decay` whatever the power.

    Optimizers (the decay each multiplies by the LR is `weight_decay_t`): Keras's
    `AdamW`, and `SGD` or any Keras optimizer given a `weight_decay` (decoupled, as
    above); `ScheduleFreeSGD` / `ScheduleFreeAdamW` (the authors' `d = g + weight_decay
    * y`, then `z -= lr_k d`); `Prodigy` and `DAdaptAdam` (`w -= weight_decay * d lr *
    w` with `decouple=True`; with `decouple=False` it is added to the gradient). For
    those the LR is the multiplier the controller sets (Prodigy's 1.0 times a
    schedule), which the decay follows. An optimizer without a decay (Keras's
    `weight_decay=None`: Adam, SGD, RMSprop... by default; `Mechanic`) is refused
    when the trainer checks it, naming the fix. Its `weight_decay = 0` counts as a
    decay to set only when `DecayFollowsLR.weight_decay` gives the coefficient.

    Differences from the papers: AdamC corrects the decay of the layers followed by a
    normalization only (every linear layer but the output one, in its LLM runs) and
    keeps AdamW's elsewhere; here one coefficient applies to every variable the
    optimizer decays (Keras's `optimizer.exclude_from_weight_decay(var_names=...)`
    leaves some out). The decay follows the controller's proposed LR, before the
    trainer's non-finite guard scales it (by `Trainer.nonfinite_lr_factor` per skipped
    batch; 1 until a batch is skipped). A batch whose LR the guard refuses (NaN/Inf or
    negative) gets a NaN decay, which is not applied either: the previous batch's
    value stays, as the LR does.

    The reference LR: `reference_lr` if given; else the wrapped controller's peak when
    its arguments say it (`known_peak_lr`: the built-in schedules and the wrappers
    around them, or a controller's own `peak_lr`), the papers' `lr_max`; else, for a
    rule whose peak is unknown until it happens (one that reacts to the loss), the
    running maximum of its LR so far, an in-graph, checkpointed variable (a
    warmup's decay then stays at `weight_decay` until the peak, where a known peak
    lowers it in proportion). Logged: `controller/decay/reference_lr` and
    `controller/decay/factor` (`(lr_t / reference_lr) ** power`).

    Args:
      controller: the LR controller (any: a schedule, a rule, a composite).
      weight_decay: the decay coefficient at `lr_t = reference_lr` (>= 0), in Keras's
        units (the `weight_decay` of `AdamW`); None (the default): the optimizer's own
        (`keras.optimizers.AdamW.weight_decay`, `Prodigy.weight_decay`, ...), read when
        the trainer checks the optimizer.
      power: how the coefficient follows the LR (> 0): 1 (AdamC), 2.
      reference_lr: `lr_max` (> 0); None (the default): the controller's known peak,
        else the running maximum of its LR.

    Examples:
      Trainer.controller = @DecayFollowsLR()
      Trainer.optimizer = 'adamw'
      keras.optimizers.AdamW.weight_decay = 0.05    # the decay at the peak LR
      DecayFollowsLR.controller = @WarmupCosineController()
      DecayFollowsLR.power = 1                      # effective decay ~ lr**2 (AdamC)

      >>> from lrresearch.controllers import DecayFollowsLR, WarmupCosineController
      >>> from lrresearch.controllers.signals import make_signals
      >>> schedule = WarmupCosineController(base_lr=0.1, warmup_steps=10, decay_steps=110)
      >>> c = DecayFollowsLR(schedule, weight_decay=0.05)
      >>> [round(float(c.compute(make_signals(t, 1.0)).weight_decay), 4)
      ...  for t in (0, 5, 10, 60, 110)]
      [0.0, 0.025, 0.05, 0.025, 0.0]

    References:
      Defazio. "Why Gradients Rapidly Increase Near the End of Training."
      arXiv:2506.02285 (2025): AdamC / SGDC. Read here through its abstract and
      secondary summaries (the full text was not reachable from this machine): the
      normalized layers' decay is `lambda * lr_t ** 2 / lr_max` per step.
      Chou. "Correction of Decoupled Weight Decay." arXiv:2512.08217 (2025): decoupled
      decay `~ lr ** 2` keeps the weight norm steady (read through its abstract).
      Loshchilov, Hutter. "Decoupled Weight Decay Regularization." ICLR 2019 (AdamW).
    """

    standalone = False

    def __init__(
        self,
        controller: Controller = gin.REQUIRED,
        weight_decay: float | None = None,
        power: float = 1.0,
        reference_lr: float | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_controller(OWNER, "controller", controller)
        if "weight_decay" in controller.optimizer_hyperparameters:
            raise ValueError(
                f"{OWNER}.controller must leave the weight decay to {OWNER}, got "
                f"{type(controller).__name__}, which sets it already; wrap its LR controller"
            )
        if weight_decay is not None:
            check_nonnegative(OWNER, weight_decay=weight_decay)
        check_positive(OWNER, power=power)
        if reference_lr is not None:
            check_positive(OWNER, reference_lr=reference_lr)
        self.base, self.power = controller, float(power)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.weight_decay_argument = self.weight_decay
        self.reference_lr = reference_lr if reference_lr is not None else known_peak_lr(controller)
        if self.reference_lr is None:
            # The LR's running maximum; checkpointed with the controller.
            self.running_max_lr = tf.Variable(0.0, trainable=False, name="running_max_lr")
        self.initial_lr = controller.initial_lr

    @property
    def optimizer_hyperparameters(self) -> frozenset[str]:
        """The controller's own (a momentum passes through) and the weight decay."""
        return self.base.optimizer_hyperparameters | {"weight_decay"}

    def check_optimizer(self, optimizer: keras.optimizers.Optimizer) -> None:
        """The controller's check, then refuses an optimizer without a decay to set; a
        `weight_decay` of None takes the optimizer's own here (refused if it is 0)."""
        super().check_optimizer(optimizer)
        cls = type(optimizer)
        keras_class = cls.__module__.startswith("keras")
        binding = f"{'keras.optimizers.' if keras_class else ''}{cls.__name__}.weight_decay"
        value = weight_decay_value(optimizer)
        if value is None:
            raise ValueError(
                f"Trainer.controller = @{OWNER}() sets the optimizer's weight decay every "
                f"batch, but {cls.__name__} has none ({weight_decay_attribute(optimizer)} "
                f"= None); use Trainer.optimizer = 'adamw' (or @keras.optimizers.AdamW, "
                f"@ScheduleFreeAdamW, @Prodigy), or give it a decay to set, e.g. "
                f"{binding} = 0.0 with {OWNER}.weight_decay = 1e-4"
            )
        if self.weight_decay_argument is None:
            if value == 0:
                raise ValueError(
                    f"{OWNER}.weight_decay = None takes the optimizer's, and {binding} = 0, "
                    f"so the decay would stay 0; bind {OWNER}.weight_decay (the decay at "
                    f"the peak LR, e.g. 0.05) or {binding}"
                )
            self.weight_decay = value

    def _reference(self, lr: tf.Tensor, usable: tf.Tensor) -> tf.Tensor:
        """This batch's reference LR (float64): the fixed one, or the running maximum
        updated with `lr` when the guard accepts it."""
        if self.reference_lr is not None:
            return tf.constant(self.reference_lr, tf.float64)
        running = tf.where(usable, tf.maximum(self.running_max_lr, lr), self.running_max_lr)
        self.running_max_lr.assign(running)
        return tf.cast(running, tf.float64)

    def compute(self, signals: Signals) -> ControllerOutput:
        if self.weight_decay is None:
            raise ValueError(
                f"{OWNER}.weight_decay = None takes the optimizer's, which is read when the "
                f"trainer checks it; used alone, bind {OWNER}.weight_decay or call "
                f"check_optimizer(optimizer) first"
            )
        out = self.base.compute(signals)
        lr = tf.cast(out.lr, tf.float32)
        usable = tf.logical_and(tf.math.is_finite(lr), lr >= 0.0)
        reference = self._reference(lr, usable)
        # float64, rounded once at the end (as the schedules); 0/0 (an LR of 0 before
        # any other) counts as 0: the decay is multiplied by that LR anyway.
        factor = tf.math.divide_no_nan(tf.cast(lr, tf.float64), reference) ** self.power
        decay = tf.where(usable, self.weight_decay * factor, float("nan"))
        diagnostics = {
            **out.diagnostics,
            "decay/reference_lr": tf.cast(reference, tf.float32),
            "decay/factor": tf.cast(factor, tf.float32),
        }
        return out._replace(diagnostics=diagnostics, weight_decay=tf.cast(decay, tf.float32))
