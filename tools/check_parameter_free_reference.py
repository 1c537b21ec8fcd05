"""Compares `DoGController`, `DoWGController` and `DAdaptSGDController` with their
reference code.

References (not dependencies of lrresearch; install them in a scratch venv next to
lrresearch): the authors' DoG, PyPI `dog-optimizer` (github.com/formll/dog, class
`dog.DoG`, PyTorch); the authors' D-Adaptation, PyPI `dadaptation`
(github.com/facebookresearch/dadaptation, class `DAdaptSGD` with momentum 0); and
optax's `optax.contrib.dowg` (JAX; DoWG's authors published no code of their own).
Both sides train the same softmax regression in float64 (one weight matrix, the bias
folded in as a column of ones) with plain SGD, on the same minibatches from the same
initial weights. Ours runs the trainer's per-batch path
(`batch_signals` -> `set_lr` -> `optimizer.apply`, compiled) with float64 weights; the
controllers' own arithmetic is float32. The step size of batch `t` is the one applied to
it: `param_groups[0]["eta"][0]` after DoG's `step()`, `d * lr / g0_norm` of
`DAdaptSGD`'s group before its `step()`, and for DoWG the learning rate `scale_by_dowg`
computes from its state.

Prints, per method and setting, the largest relative difference of the step size and
of the weights over the run, with the machine, versions, date and command.

Run (in a venv with lrresearch, torch, dog-optimizer and optax):
  python tools/check_parameter_free_reference.py [--steps=500]
Exits 1 if a row differs by more than 1e-5 (step size) or 1e-5 (weights).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from measured_page import run_and_write

from lrresearch.controllers import DAdaptSGDController, DoGController, DoWGController
from lrresearch.signals import MovingAverage
from lrresearch.step import batch_signals, set_lr

TOLERANCE = 1e-5
CLASSES, FEATURES, BATCH = 4, 20, 32
INTRO = (
    "`DoGController` against the authors' `DoG` (PyPI `dog-optimizer`, "
    "github.com/formll/dog), `DAdaptSGDController` against the authors' `DAdaptSGD` "
    "(PyPI `dadaptation`, momentum 0) and `DoWGController` against `optax.contrib.dowg`, "
    "same data and initial weights, float64 weights on both sides, plain SGD. Needs "
    "torch, dog-optimizer, dadaptation and optax in a scratch venv."
)

# "method, setting", ours, the reference's arguments.
CASES = [
    ("DoG, reps_rel 1e-6", lambda: DoGController(), {"reps_rel": 1e-6}),
    ("DoG, reps_rel 1e-4", lambda: DoGController(reps_rel=1e-4), {"reps_rel": 1e-4}),
    ("DoG, init_eta 0.01", lambda: DoGController(init_eta=0.01), {"init_eta": 0.01}),
    ("DAdaptSGD, defaults", lambda: DAdaptSGDController(), {}),
    ("DAdaptSGD, growth 1.02", lambda: DAdaptSGDController(growth_rate=1.02),
     {"growth_rate": 1.02}),
    ("DoWG, defaults", lambda: DoWGController(), {}),
    ("DoWG, init 1e-2", lambda: DoWGController(init_estim_sq_dist=1e-2),
     {"init_estim_sq_dist": 1e-2}),
]  # fmt: skip


def problem(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minibatches (steps, BATCH, FEATURES + 1) with a ones column, labels, W0."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=(steps, BATCH))
    x = centers[y] + 1.5 * rng.normal(size=(steps, BATCH, FEATURES))
    x = np.concatenate([x, np.ones((steps, BATCH, 1))], axis=-1)
    w0 = 0.1 * rng.normal(size=(FEATURES + 1, CLASSES))
    return x, y.astype(np.int64), w0


def dog_run(kwargs, x, y, w0):
    """The authors' DoG; returns (step sizes, weights after each batch)."""
    import torch
    from dog import DoG

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = DoG([w], **kwargs)
    etas, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        optimizer.step()
        etas.append(float(optimizer.param_groups[0]["eta"][0]))
        weights.append(w.detach().numpy().copy())
    return np.array(etas), np.array(weights)


def dadapt_run(kwargs, x, y, w0):
    """The authors' DAdaptSGD (momentum 0); returns (step sizes, weights after each batch)."""
    import torch
    from dadaptation import DAdaptSGD

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = DAdaptSGD([w], momentum=0.0, **kwargs)
    etas, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        group = optimizer.param_groups[0]
        d = group["d"]
        optimizer.step()
        etas.append(d * group["lr"] / group["g0_norm"])  # the step it just took
        weights.append(w.detach().numpy().copy())
    return np.array(etas), np.array(weights)


def dowg_run(kwargs, x, y, w0):
    """optax.contrib.dowg in float64; returns (step sizes, weights after each batch)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    transform = optax.contrib.scale_by_dowg(**kwargs)
    eps = 1e-4

    def loss_fn(w, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(xb @ w, yb).mean()

    w = jnp.asarray(w0)
    state = transform.init(w)
    etas, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        grad = jax.grad(loss_fn)(w, jnp.asarray(xb), jnp.asarray(yb))
        updates, state = transform.update(grad, state, w)
        etas.append(float(state.estim_sq_dist / (jnp.sqrt(state.weighted_sq_norm_grads) + eps)))
        w = w - updates  # optax.dowg scales by -1 (learning rate 1) after this transform
        weights.append(np.asarray(w))
    return np.array(etas), np.array(weights)


def our_run(make_controller, x, y, w0):
    """The controller and Keras SGD (float64 weights) through the per-batch path."""
    w = tf.Variable(w0, name="w")
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build([w])
    controller = make_controller()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import dadaptation
        import dog
        import torch
    except ImportError as e:
        sys.exit(f"needs torch, dog-optimizer, dadaptation (not lrresearch dependencies): {e}")
    try:
        import optax
    except ImportError:
        optax = None  # the DoWG rows are skipped
    import importlib.metadata as metadata

    print(
        f"versions: torch {torch.__version__}, dog-optimizer {metadata.version('dog-optimizer')} "
        f"({dog.__file__}), dadaptation {metadata.version('dadaptation')} "
        f"({dadaptation.__file__}), optax {optax.__version__ if optax else 'not installed'}, "
        f"numpy {np.__version__}"
    )
    print(
        f"problem: softmax regression, {FEATURES}+1 x {CLASSES} float64 weights, batch "
        f"{BATCH}, {args.steps} batches, plain SGD\n"
    )
    x, y, w0 = problem(args.steps)
    print("| method | step size range (ours) | max rel step-size diff | max rel weight diff |")
    print("|---|---|---|---|")
    failed = False
    for name, make, kwargs in CASES:
        method = name.split(",")[0]  # "DoG", "DAdaptSGD" or "DoWG"
        reference = {"DoG": dog_run, "DAdaptSGD": dadapt_run, "DoWG": dowg_run}[method]
        if reference is dowg_run and optax is None:
            print(f"| {name} | skipped: optax not installed | | |")
            continue
        ref_etas, ref_w = reference(kwargs, x, y, w0)
        etas, weights = our_run(make, x, y, w0)
        eta_diff = float(np.max(np.abs(etas - ref_etas) / np.abs(ref_etas)))
        scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / scale))
        print(f"| {name} | {etas.min():.4g} .. {etas.max():.4g} | {eta_diff:.2e} | {w_diff:.2e} |")
        failed |= eta_diff > TOLERANCE or w_diff > TOLERANCE
    print("\nweight diff: max over batches of max|w_ours - w_ref| / max|w_ref|")
    return 1 if failed else 0


if __name__ == "__main__":
    title = "DoG, D-Adaptation SGD and DoWG against their references"
    sys.exit(run_and_write(main, "docs/parity/parameter_free.md", title, INTRO))
