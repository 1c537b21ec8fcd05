"""Compares `Prodigy` and `DAdaptAdam` with the authors' PyTorch code.

References (not dependencies of lrresearch; install them in a scratch venv next to
lrresearch): PyPI `prodigyopt` (github.com/konstmish/prodigy, class `Prodigy`) and PyPI
`dadaptation` (github.com/facebookresearch/dadaptation, class `DAdaptAdam`). Both sides
train the same softmax regression (`check_parameter_free_reference.problem`, the
weights as two variables, a 20 x 4 matrix and a bias of 4, so `d`'s sums run over more
than one variable) in float64 (two settings also in float32), on the same minibatches
from the same initial weights, with the same LR per batch (rounded to float32, the dtype
of Keras's LR variable). Ours runs `optimizer.apply` in a `tf.function`, assigning the
LR variable before each batch as the trainer does. For scale, each row also runs the
reference against itself from initial weights one ulp larger.

The step size of batch `t` is the `dlr` the reference applied to the weights: `d * lr`
(times the bias correction) of the group before its `step()`, or 0 when that step
returned before the update (its `k` did not advance: an all-zero first gradient, LR 0);
ours is `optimizer/effective_lr`. Settings: the defaults, non-default arguments, an LR
that changes every batch (a linear warmup from 0, then a cosine), and a first batch
whose gradient is zero (the loss times 0).

Run (in a venv with lrresearch, torch, prodigyopt and dadaptation):
  python tools/check_d_adapt_reference.py [--steps=500]
Exits 1 if a row differs by more than 1e-5 (step size) or 1e-5 (weights).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from check_parameter_free_reference import problem
from measured_page import run_and_write

from lrresearch.optimizers import DAdaptAdam, Prodigy

TOLERANCE = 1e-5
INTRO = (
    "`Prodigy` against the authors' `prodigyopt.Prodigy` and `DAdaptAdam` against the "
    "authors' `dadaptation.DAdaptAdam`: same data, initial weights and per-batch LR, "
    "float64 weights on both sides (two variables; the last two rows float32). Needs "
    "torch, prodigyopt and dadaptation in a scratch venv."
)
WD = 0.01

# name, ours (class, kwargs), reference kwargs, LR schedule, zero first gradient.
CASES = [
    ("Prodigy, defaults", (Prodigy, {}), {}, "constant", False),
    ("Prodigy, decoupled wd, bias corr., beta_3 0.99",
     (Prodigy, {"weight_decay": WD, "use_bias_correction": True, "beta_3": 0.99}),
     {"weight_decay": WD, "use_bias_correction": True, "beta3": 0.99}, "constant", False),
    ("Prodigy, coupled wd, safeguard, d_coef 0.5, growth 1.02",
     (Prodigy, {"weight_decay": WD, "decouple": False, "safeguard_warmup": True,
                "d_coef": 0.5, "growth_rate": 1.02}),
     {"weight_decay": WD, "decouple": False, "safeguard_warmup": True, "d_coef": 0.5,
      "growth_rate": 1.02}, "constant", False),
    ("Prodigy, beta_1 0, eps 1e-6, d0 1e-5",
     (Prodigy, {"beta_1": 0.0, "epsilon": 1e-6, "d0": 1e-5}),
     {"betas": (0.0, 0.999), "eps": 1e-6, "d0": 1e-5}, "constant", False),
    ("Prodigy, slice_p 3", (Prodigy, {"slice_p": 3}), {"slice_p": 3}, "constant", False),
    ("Prodigy, warmup from 0 + cosine, safeguard",
     (Prodigy, {"safeguard_warmup": True}), {"safeguard_warmup": True}, "warmup", False),
    ("Prodigy, zero first gradient", (Prodigy, {}), {}, "constant", True),
    ("DAdaptAdam, defaults", (DAdaptAdam, {}), {}, "constant", False),
    ("DAdaptAdam, decoupled wd, bias corr.",
     (DAdaptAdam, {"weight_decay": WD, "decouple": True, "use_bias_correction": True}),
     {"weight_decay": WD, "decouple": True, "use_bias_correction": True}, "constant", False),
    ("DAdaptAdam, coupled wd, growth 1.02, beta_2 0.99",
     (DAdaptAdam, {"weight_decay": WD, "growth_rate": 1.02, "beta_2": 0.99}),
     {"weight_decay": WD, "growth_rate": 1.02, "betas": (0.9, 0.99)}, "constant", False),
    ("DAdaptAdam, warmup from 0 + cosine", (DAdaptAdam, {}), {}, "warmup", False),
    ("DAdaptAdam, zero first gradient", (DAdaptAdam, {}), {}, "constant", True),
    # Float32 weights on both sides: our scalar state stays float64, as the authors'
    # Python floats; the per-variable sums are float32 on both sides.
    ("Prodigy, defaults, float32 weights", (Prodigy, {}), {}, "constant", False),
    ("DAdaptAdam, decoupled wd, bias corr., float32 weights",
     (DAdaptAdam, {"weight_decay": WD, "decouple": True, "use_bias_correction": True}),
     {"weight_decay": WD, "decouple": True, "use_bias_correction": True}, "constant", False),
]  # fmt: skip


def schedule(kind: str, steps: int) -> np.ndarray:
    """The LR per batch, as float32 values: 1.0, or a linear warmup from 0 over the
    first tenth and a cosine to 0.1 after it."""
    if kind == "constant":
        return np.ones(steps, np.float32)
    warmup = max(steps // 10, 1)
    t = np.arange(steps)
    cosine = 0.1 + 0.45 * (1 + np.cos(math.pi * (t - warmup) / (steps - warmup)))
    return np.where(t < warmup, t / warmup, cosine).astype(np.float32)


def reference_run(cls_name, kwargs, x, y, w0, lrs, loss_scale):
    """The authors' optimizer; returns (step sizes applied, weights after each batch)."""
    import torch

    if cls_name == "Prodigy":
        from prodigyopt import Prodigy as Reference
    else:
        from dadaptation import DAdaptAdam as Reference
    w = torch.nn.Parameter(torch.tensor(w0[:-1]))
    b = torch.nn.Parameter(torch.tensor(w0[-1]))
    with contextlib.redirect_stdout(io.StringIO()):  # "Using decoupled weight decay"
        optimizer = Reference([w, b], **kwargs)
    group = optimizer.param_groups[0]
    steps, weights = [], []
    for xb, yb, lr, scale in zip(x, y, lrs, loss_scale, strict=True):
        group["lr"] = float(lr)
        optimizer.zero_grad()
        logits = torch.tensor(xb[:, :-1]) @ w + b
        loss = scale * torch.nn.functional.cross_entropy(logits, torch.tensor(yb))
        loss.backward()
        k, beta1, beta2 = group["k"], *group["betas"]
        correction = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1))
        dlr = group["d"] * group["lr"] * (correction if group["use_bias_correction"] else 1)
        optimizer.step()
        steps.append(dlr if group["k"] == k + 1 else 0.0)  # 0: returned before updating
        weights.append(np.concatenate([w.detach().numpy(), b.detach().numpy()[None]]))
    return np.array(steps), np.array(weights)


def our_run(make, x, y, w0, lrs, loss_scale):
    """Ours, weights in w0's dtype; returns (float64 effective_lr, weights after each)."""
    cls, kwargs = make
    w, b = tf.Variable(w0[:-1], name="w"), tf.Variable(w0[-1], name="b")
    optimizer = cls(**kwargs)
    optimizer.build([w, b])

    @tf.function
    def step(xb, yb, lr, scale):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            logits = xb[:, :-1] @ w + b  # in the weights' dtype throughout, as the reference
            loss = scale * tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
            )
        optimizer.apply(tape.gradient(loss, [w, b]), [w, b])
        weights = tf.concat([w, b[None]], axis=0)
        # The float64 variable: the logged tag is its float32 cast (6e-8 relative).
        return tf.identity(optimizer.effective_lr), weights

    out = [step(*args) for args in zip(x, y, lrs, loss_scale.astype(w0.dtype), strict=True)]
    return np.array([float(s) for s, _ in out]), np.array([v.numpy() for _, v in out])


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - ref| / |ref| over the steps (0 where both are 0)."""
    scale = np.where(reference == 0, 1.0, np.abs(reference))
    return float(np.max(np.abs(ours - reference) / scale))


def weight_diff(weights: np.ndarray, reference: np.ndarray) -> float:
    """max over batches of max |w - w_ref| / max |w_ref|."""
    scale = np.max(np.abs(reference), axis=(1, 2))
    return float(np.max(np.max(np.abs(weights - reference), axis=(1, 2)) / scale))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import dadaptation
        import prodigyopt
        import torch
    except ImportError as e:
        sys.exit(f"needs torch, prodigyopt, dadaptation (not lrresearch dependencies): {e}")
    import importlib.metadata as metadata

    print(
        f"versions: torch {torch.__version__}, prodigyopt {metadata.version('prodigyopt')} "
        f"({prodigyopt.__file__}), dadaptation {metadata.version('dadaptation')} "
        f"({dadaptation.__file__}), numpy {np.__version__}"
    )
    x64, y, w64 = problem(args.steps)
    print(
        f"problem: softmax regression, {x64.shape[-1] - 1} x {w64.shape[1]} weights + a "
        f"bias, float64 (float32 where the row says), batch {x64.shape[1]}, {args.steps} "
        "batches\n"
    )
    print("| optimizer, setting | step size range (ours) | final step size | max rel "
          "step-size diff | max rel weight diff | ref. vs itself, w0 + 1 ulp |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    failed = False
    for name, make, kwargs, kind, zero_first in CASES:
        dtype = np.float32 if "float32" in name else np.float64
        x, w0 = x64.astype(dtype), w64.astype(dtype)
        lrs = schedule(kind, args.steps)
        loss_scale = np.ones(args.steps, dtype)
        loss_scale[0] = 0.0 if zero_first else 1.0
        ref_steps, ref_w = reference_run(name.split(",")[0], kwargs, x, y, w0, lrs, loss_scale)
        steps, weights = our_run(make, x, y, w0, lrs, loss_scale)
        nudged = reference_run(name.split(",")[0], kwargs, x, y, np.nextafter(w0, np.inf),
                               lrs, loss_scale)[1]  # fmt: skip
        step_diff = relative(steps, ref_steps)
        w_diff, own_diff = weight_diff(weights, ref_w), weight_diff(nudged, ref_w)
        print(f"| {name} | {steps.min():.3g} .. {steps.max():.3g} | {steps[-1]:.3g} "
              f"| {step_diff:.2e} | {w_diff:.2e} | {own_diff:.2e} |")  # fmt: skip
        failed |= step_diff > TOLERANCE or w_diff > TOLERANCE
    print(
        "\nstep size: `optimizer/effective_lr` against the reference's `dlr` (0 on a step "
        "that returned before the update). weight diff: max over batches of "
        "max|w_ours - w_ref| / max|w_ref|. The last column runs the reference against "
        "itself from initial weights one ulp larger: how much this problem "
        "amplifies rounding under that setting (where d grows until Adam's steps "
        "oscillate, as DAdaptAdam's defaults here, 1e-16 grows to ~3e-7 in 500 steps). "
        "The logged `optimizer/effective_lr` is the float32 cast of the float64 state "
        "compared here (6e-8 relative)."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "Prodigy and D-Adaptation Adam against the authors' code"
    sys.exit(run_and_write(main, "docs/parity/d_adapt.md", title, INTRO))
