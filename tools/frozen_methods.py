"""What `tools/frozen_config.py` runs: the tuning-free methods (each with its published
defaults and its one calibration knob), the frozen baseline and the workloads.

A method lrresearch does not have yet (its class is not registered: its branch has not
been merged) is left out of the study and named on the page; adding a method is one
entry of `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from parameter_free_claims import TABLES

FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)  # the calibration grid, times the published value
BASELINE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # AdamW + warmup-cosine peaks
LM_BASELINE_GRID = (1e-3, 3e-3, 1e-2)  # workload_results.py's grid for the transformer
CALIBRATION = "digits"  # the workload the one frozen configuration is calibrated on
NO_EXTRAS = ("Trainer.histogram_every = 0", "Trainer.checkpoint_every = 0")


class Workload(NamedTuple):
    """A built-in workload as this study runs it. `floor` is the scored metric's
    resolution (one eval example's error; see `frozen_scoring.ratios`)."""

    label: str
    gin_file: str
    params: tuple[str, ...]
    steps: int
    tag: str
    higher_is_better: bool
    floor: float


def workloads(quick: bool) -> dict[str, Workload]:
    """The six built-in workloads, cheapest first (`--quick`: a tenth of the batches)."""
    q = 10 if quick else 1

    def w(label, gin_file, steps, eval_n, tag="eval/accuracy", extra=()):
        steps = max(20, steps // q)
        params = (*NO_EXTRAS, *extra, f"Trainer.steps = {steps}", "Trainer.eval_every = 0")
        return Workload(label, gin_file, params, steps, tag, tag != "eval/bits_per_byte",
                        1.0 / eval_n)  # fmt: skip

    iris = "experiments/iris_logreg.gin"
    return {
        "iris": w("Iris logistic regression (training accuracy)", iris, TABLES["iris"], 150),
        "wine": w(
            "Wine logistic regression (training accuracy)",
            iris,
            TABLES["wine"],
            178,
            extra=("tabular.name = 'wine'",),
        ),
        "digits": w("digits MLP (base.gin)", "base.gin", 2000, 359),
        "mnist1d_mlp": w("MNIST-1D MLP", "experiments/mnist1d_mlp.gin", 3000, 1000),
        "mnist1d_cnn": w("MNIST-1D CNN", "experiments/mnist1d_cnn.gin", 3000, 1000),
        "lm": w(
            "byte-level transformer (bits/byte)",
            "experiments/stdlib_transformer.gin",
            LM_STEPS,
            1e6,
            tag="eval/bits_per_byte",
        ),
    }


LM_STEPS = 200  # see lm_steps_reason


def lm_steps_reason(seconds_per_run: float, runs: int) -> str:
    """Why the transformer trains `LM_STEPS` batches, from the study's own cost: its
    `runs` transformer runs (planned) at `seconds_per_run` (measured mean, one core)."""
    hours = runs * seconds_per_run / 3600
    return (
        f"The transformer trains {LM_STEPS} batches of 32 windows (`workload_results.py` "
        f"trains 400), because of its cost: the study plans {runs} transformer runs (the "
        f"peak grid, and every configuration x 3 seeds), which took {seconds_per_run:.0f} s "
        f"each on one core of this machine (measured mean): {hours:.1f} h of one core at "
        f"{LM_STEPS} batches, about {2 * hours:.1f} h at 400. The MNIST-1D models train "
        "3,000 batches of 100 (as `parameter_free_claims.py`'s CNN), the digits MLP 2,000 "
        "batches of 64, Iris and Wine 100 epochs of 16 (as `parameter_free_claims.py`); "
        "every workload evaluates once, after its last batch."
    )


class Method(NamedTuple):
    """A tuning-free method: `bindings(value)` are its gin bindings with its one knob at
    `value`; `default` is the published value, `source` where it is published."""

    label: str
    requires: str  # the gin configurable that must exist
    knob: str
    default: float
    bindings: Callable[[float], tuple[str, ...]]
    source: str


def _constant(optimizer: str, *extra: str) -> Callable[[float], tuple[str, ...]]:
    """An optimizer at a constant LR (`ConstantController.lr`)."""
    return lambda lr: (f"Trainer.optimizer = {optimizer}", *extra,
                       "Trainer.controller = @ConstantController()",
                       f"ConstantController.lr = {lr!r}")  # fmt: skip


def _controller(name: str, arg: str, optimizer: str = "'sgd'") -> Callable:
    """A controller on plain SGD, its knob `arg`."""
    return lambda v: (f"Trainer.optimizer = {optimizer}", f"Trainer.controller = @{name}()",
                      f"{name}.{arg} = {v!r}")  # fmt: skip


def _scaled(name: str) -> Callable:
    """A controller without a multiplier, scaled by a constant factor (optax's
    `learning_rate`, which multiplies the method's step)."""
    return lambda v: ("Trainer.optimizer = 'sgd'", "Trainer.controller = @Product()",
                      f"Product.base = @{name}()", "Product.factor = @ConstantController()",
                      f"ConstantController.lr = {v!r}")  # fmt: skip


def _cocob(alpha: float) -> tuple[str, ...]:
    """COCOB at `alpha` (its LR factor stays 1: COCOB's step does not depend on it)."""
    return (
        "Trainer.optimizer = @COCOB",
        f"COCOB.alpha = {alpha!r}",
        "Trainer.controller = @ConstantController()",
        "ConstantController.lr = 1.0",
    )


METHODS = [
    Method("DoG", "DoGController", "c", 1.0, _controller("DoGController", "c"),
           "formll/dog `DoG(lr=1.0, reps_rel=1e-6)` (the paper's c = lr; reps_rel left at "
           "1e-6 on every workload, as one frozen configuration)"),
    Method("DoWG", "DoWGController", "LR factor", 1.0, _scaled("DoWGController"),
           "optax `contrib.dowg(learning_rate=1.0, eps=1e-4)`"),
    Method("D-Adapt SGD", "DAdaptSGDController", "c", 1.0,
           _controller("DAdaptSGDController", "c"),
           "facebookresearch/dadaptation `DAdaptSGD(lr=1.0, momentum=0, d0=1e-6)`"),
    Method("D-Adapt Adam", "DAdaptAdam", "lr", 1.0, _constant("@DAdaptAdam"),
           "facebookresearch/dadaptation `DAdaptAdam(lr=1.0, betas=(0.9, 0.999))`"),
    Method("Prodigy", "Prodigy", "lr", 1.0, _constant("@Prodigy"),
           "konstmish/prodigy `Prodigy(lr=1.0, d_coef=1.0)`, constant LR (its class "
           "defaults; the README also suggests a cosine decay, not used here)"),
    Method("Mechanic (SGD)", "Mechanic", "base lr", 1.0,
           _constant("@Mechanic", "Mechanic.base_optimizer = 'sgd'"),
           "optimizedlearning/mechanic README: `mechanize(torch.optim.SGD)(params, lr=1.0)`, "
           "s_decay 0.01"),
    Method("Schedule-Free SGD", "ScheduleFreeSGD", "lr", 1.0, _constant("@ScheduleFreeSGD"),
           "facebookresearch/schedule_free `SGDScheduleFree(lr=1.0, momentum=0.9, "
           "warmup_steps=0)`"),
    Method("Schedule-Free AdamW", "ScheduleFreeAdamW", "lr", 0.0025,
           _constant("@ScheduleFreeAdamW"),
           "facebookresearch/schedule_free `AdamWScheduleFree(lr=0.0025, warmup_steps=0, "
           "weight_decay=0)`"),
    # The methods of issue 26 (their branches: i26-momo, i26-ngn, i26-cocob, i26-sf).
    Method("MoMo", "MoMo", "lr", 1.0, _constant("@MoMo"),
           "fabian-sp/MoMo README: `Momo(params, lr=1)`, class defaults beta 0.9, lb 0, "
           "use_fstar False"),
    Method("MoMo-Adam", "MoMoAdam", "lr", 1e-2, _constant("@MoMoAdam"),
           "fabian-sp/MoMo README: `MomoAdam(params, lr=1e-2)`, class defaults betas "
           "(0.9, 0.999), lb 0, use_fstar False"),
    Method("NGN", "NGNController", "lr", 0.1, _controller("NGNController", "lr"),
           "fabian-sp/step-back `NGN(lr=0.1)` (its default; the paper's c), lb 0"),
    Method("AdaGrad-Norm", "AdaGradNormController", "lr", 1.0,
           _controller("AdaGradNormController", "lr"),
           "Ward, Wu & Bottou 2019: eta (lr) 1; b0 0.1 as in Orvieto & Xiao's NGN code"),
    Method("IAM", "IAM", "lr", 1.0, _constant("@IAM"),
           "fabian-sp/step-back `IAM(lr=1.0, lmbda=9)` (class defaults), lb 0"),
    Method("COCOB", "COCOB", "alpha", 100.0, _cocob,
           "Orabona & Tommasi 2017 and optax `contrib.cocob(learning_rate=1.0, alpha=100)` "
           "(the step is invariant to an LR factor, so alpha is the knob)"),
    Method("Schedule-Free wrapper (RMSprop)", "ScheduleFreeWrapper", "lr", 0.0025,
           _constant("@ScheduleFreeWrapper",
                     "ScheduleFreeWrapper.base_optimizer = @keras.optimizers.RMSprop",
                     "keras.optimizers.RMSprop.rho = 0.99",
                     "keras.optimizers.RMSprop.epsilon = 1e-8",
                     "ScheduleFreeWrapper.momentum = 0.9",
                     "ScheduleFreeWrapper.weight_decay_at_y = 0.1"),
           "facebookresearch/schedule_free README: `ScheduleFreeWrapper(torch.optim.RMSprop("
           "params, lr=0.0025), momentum=0.9, weight_decay_at_y=0.1)`, no warmup; torch's "
           "RMSprop defaults alpha 0.99, eps 1e-8 as Keras's rho, epsilon (Keras adds eps "
           "inside the square root, torch outside)"),
    Method("Schedule-Free RAdam", "ScheduleFreeRAdam", "lr", 0.0025,
           _constant("@ScheduleFreeRAdam"),
           "facebookresearch/schedule_free `RAdamScheduleFree(lr=0.0025, "
           "silent_sgd_phase=True)`, no warmup"),
]  # fmt: skip


def baseline(steps: int, peak: float) -> tuple[str, ...]:
    """AdamW (Keras's defaults: weight decay 0.004) with warmup-cosine: 10% linear
    warmup from 0 to `peak`, cosine to 0 at the last batch (`workload_results`'s)."""
    from workload_results import _schedule

    return ("Trainer.optimizer = 'adamw'", *_schedule(steps, peak))


def available(methods: list[Method]) -> tuple[list[Method], list[Method]]:
    """(the methods whose class is registered with gin, the others)."""
    import gin

    import lrresearch.controllers
    import lrresearch.optimizers

    del lrresearch  # imported to register every configurable with gin

    def known(name: str) -> bool:
        try:
            gin.get_configurable(name)
        except ValueError:
            return False
        return True

    have = [m for m in methods if known(m.requires)]
    return have, [m for m in methods if m not in have]
