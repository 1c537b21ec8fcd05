"""Compares `Mechanic` with the authors' `mechanize` (PyPI `mechanic-pytorch`).

Reference (not a dependency of lrresearch; install it in a scratch venv next to
lrresearch with torch): `mechanic_pytorch.mechanize(torch.optim.SGD / Adam / AdamW)`
(github.com/optimizedlearning/mechanic). Both sides train the softmax regression of
`check_parameter_free_reference.problem` (21 x 4 float64 weights, the same minibatches
and initial weights): ours with Keras's SGD / Adam / AdamW as the base, the reference
with torch's. torch's default dtype is set to float64 for the reference, so its
Mechanic state (`s`, `m`, `v`, `r`, created with the default dtype) is float64 as ours
is for float64 weights. The LRs are float32 numbers, so Keras's float32 LR variable
holds exactly the reference's LR.

Two differences of the base Adams, not of Mechanic, and how the rows handle them:
Keras's Adam adds `epsilon` to `sqrt(v)` (before the bias correction), torch's adds
`eps` to `sqrt(v / (1 - beta2^t))`, so Keras's `epsilon` is torch's `eps = epsilon /
sqrt(1 - beta2^t)`: every Adam row but the last sets torch's `eps` to that each step. And
Keras's Adam rounds `beta_1` and `beta_2` through float32 in its bias correction
(`ops.cast(0.9, "float64")` is 0.8999999761581421) while its moment averages and torch
use them as given: the "exact betas" rows use betas float32 holds exactly (0.875,
1 - 2^-10), where the base updates agree to float64 rounding; the (0.9, 0.999) rows
show the size of that rounding. The "library defaults" row keeps each library's default
epsilon (Keras 1e-7, torch 1e-8, constant) and is reported, not checked. The momentum
rows wrap torch's SGD(momentum=0.9): ours with `MomentumSGD` (PyTorch's momentum,
checked) and with the short name 'momentum' (Keras's SGD, whose velocity holds the LR:
another method once the LR changes, reported only).

The effective step size of batch `t` is `sum(s) * lr_t` after its step (the reference's
`state['_mechanic']['s']`; ours `Mechanic.effective_lr`).

Run (in a venv with lrresearch, torch and mechanic-pytorch):
  python tools/check_mechanic_reference.py [--steps=500]
Exits 1 if a checked row differs by more than 1e-5 (step size or weights).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from check_parameter_free_reference import problem
from measured_page import run_and_write

from lrresearch.optimizers import Mechanic, MomentumSGD

TOLERANCE = 1e-5
INTRO = (
    "`Mechanic` (Keras SGD / Adam / AdamW as the base) against the authors' "
    "`mechanic_pytorch.mechanize` (PyPI `mechanic-pytorch` 0.0.1) around torch's SGD / "
    "Adam / AdamW, same data and initial weights, float64 weights and Mechanic state on "
    "both sides. Two differences between the base Adams, not Mechanic's: Keras adds "
    "epsilon before the bias correction, torch after (every row but the last sets "
    "torch's `eps` to Keras's `epsilon / sqrt(1 - beta2^t)` each step: 'matched eps'); "
    "Keras rounds `beta_1`, `beta_2` through float32 in its bias correction (the 'exact "
    "betas' rows use 0.875 and 1 - 2^-10, which float32 holds exactly; the (0.9, 0.999) "
    "rows show the effect). The 'library defaults' row keeps Keras's epsilon 1e-7 and "
    "torch's 1e-8 and is reported, not checked. The momentum rows wrap torch's "
    "SGD(momentum=0.9): `@MomentumSGD` (PyTorch's form) is checked; the short name "
    "'momentum' is Keras's SGD, whose velocity holds the LR, reported to show how far "
    "apart the two forms are once the LR changes per batch. Needs torch and "
    "mechanic-pytorch in a scratch venv."
)


def constant_lr(t: int, steps: int) -> float:
    return 1.0


def changing_lr(t: int, steps: int) -> float:
    """Linear warmup over 50 batches, then cosine from 1 to 0.1 (a float32 number)."""
    warmup = min(1.0, (t + 1) / 50)
    cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * t / steps))
    return float(np.float32(warmup * cosine))


# Betas and weight decay that float32 holds exactly: Keras's Adam casts `beta_1` and
# `beta_2` to the variable's dtype through float32 for its bias correction
# (`ops.cast(0.9, "float64")` is 0.8999999761581421), torch uses them as given.
EXACT = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}
DEFAULT = {"beta_1": 0.9, "beta_2": 0.999}
WEIGHT_DECAY = 2.0**-6
KERAS_EPSILON = 1e-7
MOMENTUM = 0.9  # the short name 'momentum''s

# name, base ("sgd", "adam", "adamw"; "torch momentum" / "keras momentum": our
# MomentumSGD / Keras's SGD, both momentum 0.9, against torch's SGD), the base's betas,
# Mechanic's arguments, LR schedule, checked (False: reported only).
CASES = [
    ("SGD, defaults", "sgd", {}, {}, constant_lr, True),
    ("SGD, s_decay 0.1", "sgd", {}, {"s_decay": 0.1}, constant_lr, True),
    ("SGD, s_decay 0", "sgd", {}, {"s_decay": 0.0}, constant_lr, True),
    ("SGD, betas (0.9, 0.99), s_init 1e-6, eps 1e-6", "sgd", {},
     {"betas": (0.9, 0.99), "s_init": 1e-6, "eps": 1e-6}, constant_lr, True),
    ("SGD, store_delta", "sgd", {}, {"store_delta": True}, constant_lr, True),
    ("SGD, LR per batch", "sgd", {}, {}, changing_lr, True),
    ("SGD momentum 0.9 as @MomentumSGD, LR per batch", "torch momentum", {}, {},
     changing_lr, True),
    ("SGD momentum 0.9 as 'momentum' (Keras's form), LR per batch (reported only)",
     "keras momentum", {}, {}, changing_lr, False),
    ("Adam (exact betas), matched eps", "adam", EXACT, {}, constant_lr, True),
    ("Adam (exact betas), matched eps, LR per batch, s_decay 0.1, store_delta", "adam",
     EXACT, {"s_decay": 0.1, "store_delta": True}, changing_lr, True),
    ("AdamW wd 2^-6 (exact betas), matched eps, LR per batch", "adamw", EXACT, {},
     changing_lr, True),
    ("Adam (0.9, 0.999), matched eps", "adam", DEFAULT, {}, constant_lr, True),
    ("Adam (0.9, 0.999), matched eps, LR per batch", "adam", DEFAULT, {}, changing_lr, True),
    ("Adam, library defaults (reported only)", "adam", DEFAULT, {}, constant_lr, False),
]  # fmt: skip


def reference_run(base, betas, kwargs, schedule, matched, x, y, w0):
    """The authors' mechanize(torch base), float64; (step sizes, weights after each batch)."""
    import torch
    from mechanic_pytorch import mechanize

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the Mechanic state takes the default dtype
    try:
        w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        steps = len(x)
        lr0 = schedule(0, steps)
        if base == "sgd" or base.endswith("momentum"):
            momentum = 0.0 if base == "sgd" else MOMENTUM
            optimizer = mechanize(torch.optim.SGD, **kwargs)([w], lr=lr0, momentum=momentum)
        else:
            cls = torch.optim.Adam if base == "adam" else torch.optim.AdamW
            decay = {"weight_decay": WEIGHT_DECAY} if base == "adamw" else {}
            optimizer = mechanize(cls, **kwargs)(
                [w], lr=lr0, betas=(betas["beta_1"], betas["beta_2"]), **decay
            )
        group = optimizer.param_groups[0]
        etas, weights = [], []
        for t, (xb, yb) in enumerate(zip(x, y, strict=True)):
            group["lr"] = schedule(t, steps)
            if base in ("adam", "adamw") and matched:  # Keras's epsilon, after the correction
                group["eps"] = KERAS_EPSILON / math.sqrt(1 - betas["beta_2"] ** (t + 1))
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
            loss.backward()
            optimizer.step()
            etas.append(float(optimizer.state["_mechanic"]["s"].sum()) * group["lr"])
            weights.append(w.detach().numpy().copy())
    finally:
        torch.set_default_dtype(previous)
    return np.array(etas), np.array(weights)


def our_run(base, betas, kwargs, schedule, x, y, w0):
    """Mechanic around Keras's base, float64 weights, compiled step; same outputs."""
    bases = {
        "sgd": "sgd",
        "torch momentum": functools.partial(MomentumSGD, momentum=MOMENTUM),
        "keras momentum": "momentum",  # Keras's SGD(momentum=0.9): warns, not torch's
        "adam": functools.partial(keras.optimizers.Adam, epsilon=KERAS_EPSILON, **betas),
        "adamw": functools.partial(
            keras.optimizers.AdamW, epsilon=KERAS_EPSILON, weight_decay=WEIGHT_DECAY, **betas
        ),
    }
    w = tf.Variable(w0, name="w")
    optimizer = Mechanic(schedule(0, len(x)), base_optimizer=bases[base], **kwargs)
    optimizer.build([w])

    @tf.function
    def step(lr, xb, yb):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            logits = xb @ w  # float64 throughout (Keras's losses compute in float32)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        optimizer.apply(tape.gradient(loss, [w]), [w])
        return tf.identity(optimizer.effective_lr), tf.identity(w)

    lrs = [schedule(t, len(x)) for t in range(len(x))]
    out = [step(tf.constant(lr, tf.float32), xb, yb) for lr, xb, yb in zip(lrs, x, y, strict=True)]
    return np.array([float(e) for e, _ in out]), np.array([v.numpy() for _, v in out])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import mechanic_pytorch
        import torch
    except ImportError as e:
        sys.exit(f"needs torch and mechanic-pytorch (not lrresearch dependencies): {e}")
    import importlib.metadata as metadata

    print(
        f"versions: torch {torch.__version__}, mechanic-pytorch "
        f"{metadata.version('mechanic-pytorch')} ({mechanic_pytorch.__file__}), "
        f"numpy {np.__version__}"
    )
    x, y, w0 = problem(args.steps)
    print(
        f"problem: softmax regression, {w0.shape[0]} x {w0.shape[1]} float64 weights, "
        f"batch {x.shape[1]}, {args.steps} batches; LR 1.0, or 'per batch': warmup over 50 "
        "batches then cosine 1 -> 0.1\n"
    )
    print("| setting | effective LR range (ours) | max rel step-size diff | max rel weight diff |")
    print("|---|---|---|---|")
    failed = False
    for name, base, betas, kwargs, schedule, checked in CASES:
        ref_etas, ref_w = reference_run(base, betas, kwargs, schedule, checked, x, y, w0)
        etas, weights = our_run(base, betas, kwargs, schedule, x, y, w0)
        eta_diff = float(np.max(np.abs(etas - ref_etas) / np.abs(ref_etas)))
        scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / scale))
        print(f"| {name} | {etas.min():.4g} .. {etas.max():.4g} | {eta_diff:.2e} | {w_diff:.2e} |")
        if checked:
            failed |= eta_diff > TOLERANCE or w_diff > TOLERANCE
    print("\nweight diff: max over batches of max|w_ours - w_ref| / max|w_ref|")
    return 1 if failed else 0


if __name__ == "__main__":
    title = "Mechanic against the authors' mechanic-pytorch"
    sys.exit(run_and_write(main, "docs/parity/mechanic.md", title, INTRO))
