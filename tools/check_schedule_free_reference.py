"""Compares `ScheduleFreeSGD` and `ScheduleFreeAdamW` with the authors' Schedule-Free code.

Reference (not a dependency of lrresearch; install it in a scratch venv next to
lrresearch): PyPI `schedulefree` (github.com/facebookresearch/schedule_free), the
standard classes `SGDScheduleFree` and `AdamWScheduleFree` (PyTorch, foreach path).
Both sides train the same softmax regression (`check_parameter_free_reference.problem`:
one float64 weight matrix, the bias folded in as a column of ones) on the same
minibatches from the same initial weights. Ours runs `optimizer.apply` in a
`tf.function` with the LR variable assigned before every batch; the authors' gets the
same LR in `param_groups[0]["lr"]` (rounded to float32 first, since Keras's LR variable
is float32). The rows cover the defaults, warmup, `weight_lr_power` 0 and 2 with `r`,
non-default momentum / betas, weight decay and an LR that changes every batch.

Prints, per setting, the largest relative difference over the run of the weights `y`
after each batch, of the LR after warmup (`optimizer/effective_lr` against the
authors' `scheduled_lr`) and of `weight_sum`, and, after the last batch, of the
evaluation weights `x` (the authors' `optimizer.eval()` against our `swap_to_eval`).

Run (in a venv with lrresearch, torch and schedulefree):
  python tools/check_schedule_free_reference.py [--steps=500]
Exits 1 if a row differs by more than 1e-5.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from check_parameter_free_reference import problem
from measured_page import run_and_write

from lrresearch.optimizers import ScheduleFreeAdamW, ScheduleFreeSGD

TOLERANCE = 1e-5
INTRO = (
    "`ScheduleFreeSGD` and `ScheduleFreeAdamW` against the authors' `SGDScheduleFree` "
    "and `AdamWScheduleFree` (PyPI `schedulefree`, github.com/facebookresearch/"
    "schedule_free), same data and initial weights, float64 weights on both sides (the "
    "last two rows float32), the LR assigned before every batch (float32-rounded for both, "
    "as Keras's LR variable holds it). The weights `y` are compared after every batch in "
    "train mode; `x` once, after the last batch, against the authors' `eval()`. Our "
    "`swap_to_train` restores `y` from a stash, bit for bit; the authors' `train()` "
    "interpolates back, which is not exact, so it is not compared. Needs torch and "
    "schedulefree in a scratch venv."
)


def wavy(base: float):
    """An LR that changes every batch: `base * (1 + 0.5 sin(t / 7))`."""
    return lambda t: base * (1 + 0.5 * np.sin(t / 7))


# (name, class, our kwargs, LR per batch t). The authors' kwargs are ours renamed.
CASES = [
    ("SGD, defaults (lr 1)", "SGD", {}, lambda t: 1.0),
    ("SGD, warmup 50", "SGD", {"warmup_steps": 50}, lambda t: 1.0),
    ("SGD, weight_lr_power 0", "SGD", {"weight_lr_power": 0.0, "warmup_steps": 50},
     lambda t: 1.0),
    ("SGD, weight_lr_power 2, r 1", "SGD", {"r": 1.0, "warmup_steps": 20}, lambda t: 1.0),
    ("SGD, momentum 0.5, weight decay 1e-2", "SGD",
     {"momentum": 0.5, "weight_decay": 1e-2}, lambda t: 0.5),
    ("SGD, LR per batch, warmup 30", "SGD", {"warmup_steps": 30}, wavy(1.0)),
    ("AdamW, defaults (lr 0.0025)", "AdamW", {}, lambda t: 0.0025),
    ("AdamW, warmup 50", "AdamW", {"warmup_steps": 50}, lambda t: 0.01),
    ("AdamW, weight_lr_power 0", "AdamW", {"weight_lr_power": 0.0, "warmup_steps": 50},
     lambda t: 0.01),
    ("AdamW, r 2, weight_lr_power 2", "AdamW", {"r": 2.0}, lambda t: 0.01),
    ("AdamW, betas (0.5, 0.99), eps 1e-6, weight decay 0.1", "AdamW",
     {"beta_1": 0.5, "beta_2": 0.99, "epsilon": 1e-6, "weight_decay": 0.1},
     lambda t: 0.01),
    ("AdamW, LR per batch, warmup 30", "AdamW", {"warmup_steps": 30}, wavy(0.01)),
    ("SGD, float32, LR per batch, warmup 30", "SGD", {"warmup_steps": 30}, wavy(1.0)),
    ("AdamW, float32, LR per batch, warmup 30", "AdamW", {"warmup_steps": 30}, wavy(0.01)),
]  # fmt: skip
# Rows whose name says float32 run both sides in float32 (weights and data).


def reference_run(method, kwargs, lrs, x, y, w0, dtype):
    """The authors' optimizer; returns (weights y, scheduled LRs, weight sums, final x)."""
    import schedulefree
    import torch

    kwargs = dict(kwargs)
    if method == "AdamW":
        betas = (kwargs.pop("beta_1", 0.9), kwargs.pop("beta_2", 0.999))
        kwargs["betas"] = betas
        if "epsilon" in kwargs:
            kwargs["eps"] = kwargs.pop("epsilon")
        make = schedulefree.AdamWScheduleFree
    else:
        make = schedulefree.SGDScheduleFree
    w = torch.nn.Parameter(torch.tensor(w0.astype(dtype)))
    optimizer = make([w], lr=float(lrs[0]), **kwargs)
    optimizer.train()
    group = optimizer.param_groups[0]
    weights, scheduled, sums = [], [], []
    for lr, xb, yb in zip(lrs, x, y, strict=True):
        group["lr"] = float(lr)
        optimizer.zero_grad()
        logits = torch.tensor(xb.astype(dtype)) @ w
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(yb))
        loss.backward()
        optimizer.step()
        weights.append(w.detach().numpy().copy())
        scheduled.append(group["scheduled_lr"])
        sums.append(group["weight_sum"])
    optimizer.eval()
    return np.array(weights), np.array(scheduled), np.array(sums), w.detach().numpy().copy()


def our_run(method, kwargs, lrs, x, y, w0, dtype):
    """Ours; returns (weights y, effective LRs, weight sums, x after `swap_to_eval`)."""
    w, x = tf.Variable(w0.astype(dtype), name="w"), x.astype(dtype)
    optimizer = {"SGD": ScheduleFreeSGD, "AdamW": ScheduleFreeAdamW}[method](
        learning_rate=float(lrs[0]), **kwargs
    )
    optimizer.build([w])

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = xb @ w
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        optimizer.apply(tape.gradient(loss, [w]), [w])
        # The float64 state itself (step_summaries logs it as float32).
        return tf.identity(w), optimizer.effective_lr.value, optimizer.weight_sum.value

    out = []
    for lr, xb, yb in zip(lrs, x, y, strict=True):
        optimizer.learning_rate.assign(lr)
        out.append(step(xb, yb))
    weights = np.array([o[0].numpy() for o in out])
    effective = np.array([float(o[1]) for o in out])
    sums = np.array([float(o[2]) for o in out])
    optimizer.swap_to_eval([w])
    return weights, effective, sums, w.numpy().copy()


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """max over batches of max|ours - ref| / max|ref| (per batch)."""
    ours, reference = ours.reshape(len(ours), -1), reference.reshape(len(reference), -1)
    scale = np.max(np.abs(reference), axis=1)
    return float(np.max(np.max(np.abs(ours - reference), axis=1) / scale))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import schedulefree
        import torch
    except ImportError as e:
        sys.exit(f"needs torch and schedulefree (not lrresearch dependencies): {e}")
    import importlib.metadata as metadata

    print(
        f"versions: torch {torch.__version__}, schedulefree {metadata.version('schedulefree')} "
        f"({schedulefree.__file__}), numpy {np.__version__}"
    )
    x, y, w0 = problem(args.steps)
    print(
        f"problem: softmax regression, {w0.shape[0]} x {w0.shape[1]} float64 weights (float32 "
        f"where the row says so), batch "
        f"{x.shape[1]}, {args.steps} batches\n"
    )
    print("| setting | max rel y diff | max rel effective-LR diff | max rel weight_sum diff "
          "| rel x diff (eval) |")  # fmt: skip
    print("|---|---|---|---|---|")
    failed = False
    for name, method, kwargs, lr_of in CASES:
        lrs = np.array([lr_of(t) for t in range(args.steps)], np.float32)
        dtype = np.float32 if "float32" in name else np.float64
        ref_y, ref_lr, ref_sums, ref_x = reference_run(method, kwargs, lrs, x, y, w0, dtype)
        our_y, our_lr, our_sums, our_x = our_run(method, kwargs, lrs, x, y, w0, dtype)
        diffs = (
            relative(our_y, ref_y),
            float(np.max(np.abs(our_lr - ref_lr) / np.abs(ref_lr))),
            float(np.max(np.abs(our_sums - ref_sums) / np.abs(ref_sums))),
            relative(our_x[None], ref_x[None]),
        )
        print(f"| {name} | " + " | ".join(f"{d:.2e}" for d in diffs) + " |")
        failed |= max(diffs) > TOLERANCE
    print(
        "\ny diff: max over batches of max|w_ours - w_ref| / max|w_ref|; x diff: the same "
        "for the evaluation weights after the last batch"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "Schedule-Free SGD and AdamW against the authors' code"
    sys.exit(run_and_write(main, "docs/parity/schedule_free.md", title, INTRO))
