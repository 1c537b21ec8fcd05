"""Compares `HypergradientController` with the authors' own SGDHD and AdamHD.

The authors' code (github.com/gbaydin/hypergradient-descent, `hypergrad/`) and `torch`
are not dependencies of lrresearch: check the repository out somewhere, install torch
in a scratch environment, and point `--reference_dir` at the checkout. Both sides train
the same softmax regression (one weight matrix, the bias folded in as a column of ones:
AdamHD updates the LR once per parameter tensor, so one tensor keeps the two
comparable) on the same minibatches from the same initial weights. Ours runs the
trainer's per-batch path (`batch_signals` -> `set_lr` -> `optimizer.apply`, compiled).
The LR of batch `t` is what the optimizer applied to it (`param_groups[0]["lr"]` after
the authors' `step()`, which updates the LR before using it).

Prints a table of the largest relative LR and weight differences per optimizer, with
the machine, versions, date and command. The last row is Keras's own momentum SGD,
which `HypergradientController.check_optimizer` refuses; it shows why.

Run:
  python tools/check_hypergradient_reference.py --reference_dir=PATH [--steps=500]
Exits 1 if an exact row differs by more than 1e-4 (LR) or 1e-3 (weights).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from lrresearch.controllers import HypergradientController
from lrresearch.controllers.signals import MovingAverage
from lrresearch.optimizers import MomentumSGD
from lrresearch.step.batch import batch_signals, set_lr

LR_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 1e-3
CLASSES, FEATURES, BATCH = 4, 20, 32

# name, the authors' optimizer class and arguments, ours, initial LR, hyper LR.
CASES = [
    ("sgd", "SGDHD", {}, lambda lr: keras.optimizers.SGD(lr), 0.05, 1e-3),
    ("momentum 0.9", "SGDHD", {"momentum": 0.9}, lambda lr: MomentumSGD(lr, 0.9), 0.01, 1e-4),
    (
        "nesterov 0.9",
        "SGDHD",
        {"momentum": 0.9, "nesterov": True},
        lambda lr: MomentumSGD(lr, 0.9, nesterov=True),
        0.01,
        1e-4,
    ),
    ("adam", "AdamHD", {}, lambda lr: keras.optimizers.Adam(lr, epsilon=1e-8), 1e-3, 1e-6),
    (
        "keras momentum 0.9 (refused)",
        "SGDHD",
        {"momentum": 0.9},
        lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
        0.01,
        1e-4,
    ),
]


from measured_page import run_and_write  # noqa: E402

INTRO = (
    "`HypergradientController` with our optimizers against the authors' `SGDHD` and "
    "`AdamHD` (github.com/gbaydin/hypergradient-descent, a checkout passed with "
    "`--reference_dir`), same data and initial weights. Needs torch in a scratch venv."
)


def problem(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minibatches (steps, BATCH, FEATURES + 1) with a ones column, labels, W0."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=(steps, BATCH))
    x = centers[y] + 1.5 * rng.normal(size=(steps, BATCH, FEATURES))
    x = np.concatenate([x, np.ones((steps, BATCH, 1))], axis=-1).astype(np.float32)
    w0 = (0.1 * rng.normal(size=(FEATURES + 1, CLASSES))).astype(np.float32)
    return x, y.astype(np.int64), w0


def authors_run(torch, hypergrad, name, kwargs, lr0, beta, x, y, w0):
    """The authors' optimizer on the problem; returns (lrs, weights after each batch)."""
    w = torch.nn.Parameter(torch.tensor(w0))
    optimizer = getattr(hypergrad, name)([w], lr=lr0, hypergrad_lr=beta, **kwargs)
    lrs, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        optimizer.step()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        weights.append(w.detach().numpy().copy())
    return np.array(lrs), np.array(weights)


def our_run(make_optimizer, lr0, beta, x, y, w0):
    """The controller and a Keras optimizer through the trainer's per-batch path."""
    w = tf.Variable(w0, name="w")
    optimizer = make_optimizer(lr0)
    optimizer.build([w])
    controller = HypergradientController(initial_lr=lr0, hyper_lr=beta, max_lr=100.0)
    controller.build([w])
    ma_short, ma_long = MovingAverage(10), MovingAverage(100)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(t, xb, yb):
        with tf.GradientTape() as tape:
            loss = cross_entropy(yb, xb @ w)
        grads = tape.gradient(loss, [w])
        lr_variable = optimizer.learning_rate
        signals = batch_signals(t, loss, grads, [w], ma_short, ma_long, lr_variable)
        lr, _, _ = set_lr(controller, signals, lr_variable)
        optimizer.apply(grads, [w])
        return lr, tf.identity(w)

    batches = enumerate(zip(x, y, strict=True))
    out = [step(tf.constant(t, tf.int64), xb, yb) for t, (xb, yb) in batches]
    return np.array([float(lr) for lr, _ in out]), np.array([v.numpy() for _, v in out])


def header(args: argparse.Namespace, torch) -> list[str]:
    commit = "unknown"
    commit_file = os.path.join(args.reference_dir, "COMMIT")
    if os.path.exists(commit_file):
        with open(commit_file) as f:
            commit = f.read().strip()
    else:
        probe = subprocess.run(
            ["git", "-C", args.reference_dir, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        commit = probe.stdout.strip() or commit
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
        f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}, torch {torch.__version__}, numpy {np.__version__}",
        f"reference: gbaydin/hypergradient-descent at {commit} ({args.reference_dir})",
        f"problem: softmax regression, {FEATURES}+1 x {CLASSES} weights, batch {BATCH}, "
        f"{args.steps} batches",
        f"command: python {' '.join(sys.argv)}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_dir", required=True, help="checkout of the authors' repo")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    # torch's optimizers import triton (a GPU compiler, unused here), whose extension
    # segfaulted on import in a process that had loaded TensorFlow: hide it.
    sys.modules.setdefault("triton", None)
    try:
        import torch
    except ImportError:
        sys.exit("needs torch (not an lrresearch dependency): pip install torch in a scratch venv")
    sys.path.insert(0, os.path.abspath(args.reference_dir))
    import hypergrad  # the authors' package

    warnings.filterwarnings("ignore", category=UserWarning)  # their deprecated add_ forms
    x, y, w0 = problem(args.steps)
    print("\n".join(header(args, torch)), end="\n\n")
    print("| optimizer | authors' | LR range (ours) | max rel LR diff | max rel weight diff |")
    print("|---|---|---|---|---|")
    failed = False
    for name, theirs, kwargs, ours, lr0, beta in CASES:
        ref_lrs, ref_w = authors_run(torch, hypergrad, theirs, kwargs, lr0, beta, x, y, w0)
        lrs, weights = our_run(ours, lr0, beta, x, y, w0)
        lr_diff = float(np.max(np.abs(lrs - ref_lrs) / np.abs(ref_lrs)))
        scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / scale))
        arguments = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        print(
            f"| {name} | {theirs}({arguments}) lr={lr0:g} beta={beta:g} | "
            f"{lrs.min():.4g} .. {lrs.max():.4g} | {lr_diff:.2e} | {w_diff:.2e} |"
        )
        if "refused" not in name and (lr_diff > LR_TOLERANCE or w_diff > WEIGHT_TOLERANCE):
            failed = True
    print("\nweight diff: max over batches of max|w_ours - w_ref| / max|w_ref|")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(
        run_and_write(
            main,
            "docs/parity/hypergradient.md",
            "Hypergradient descent against the authors' code",
            INTRO,
        )
    )
