"""Compares `DoGController`, `DoWGController` and `DAdaptSGDController` with their
reference code.

References (not dependencies of lrresearch; install them in a scratch venv next to
lrresearch, jax and optax in a venv of their own): the authors' DoG, PyPI
`dog-optimizer` (github.com/formll/dog, class `dog.DoG`, PyTorch); the authors'
D-Adaptation, PyPI `dadaptation` (github.com/facebookresearch/dadaptation, class
`DAdaptSGD` with momentum 0, and 0.9 against Keras's SGD(momentum=0.9)); and optax's
`optax.contrib.dowg` (JAX; DoWG's authors published no code of their own). The DoWG
reference runs in a subprocess with the other venv's Python (`--optax_python`); the
minibatches, initial weights and its arguments go to it, and its step sizes and weights
come back, through a temporary .npz file (float64).
Both sides train the same softmax regression in float64 (one weight matrix, the bias
folded in as a column of ones) with plain SGD, on the same minibatches from the same
initial weights. Ours runs the trainer's per-batch path
(`batch_signals` -> `set_lr` -> `optimizer.apply`, compiled) with float64 weights; DoG's
and DoWG's own arithmetic is float32, D-Adapt SGD's scalars are float64 (its `growth_rate`
compounds over the capped steps, more than 1,000 here). The step size of batch `t` is
the one applied to it: `param_groups[0]["eta"][0]` after DoG's `step()`, `(1 - momentum)
* d * lr / g0_norm` of `DAdaptSGD`'s group before its `step()` (the weights' heavy-ball
LR), and for DoWG the learning rate `scale_by_dowg`
computes from its state (`estim_sq_dist / (sqrt(weighted_sq_norm_grads) + eps)`, after
its `update`; the side checks that `optax.contrib.dowg`'s update is minus that times
the gradient).

Prints, per method and setting, the largest relative difference of the step size and
of the weights over the run, with the machine, versions, date and command.

Run (in a venv with lrresearch, torch, dog-optimizer and dadaptation; optax in its own):
  python3.11 -m venv /tmp/optaxvenv && /tmp/optaxvenv/bin/pip install jax optax numpy
  python tools/check_parameter_free_reference.py [--steps=2000] \
      [--optax_python=/tmp/optaxvenv/bin/python]
`--optax_python` defaults to `$OPTAX_PYTHON`; without either the DoWG rows are skipped.
Exits 1 if a row differs by more than 1e-5 (step size) or 1e-5 (weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from measured_page import run_and_write

from lrresearch.controllers import DAdaptSGDController, DoGController, DoWGController
from lrresearch.controllers.signals import MovingAverage
from lrresearch.step.batch import batch_signals, set_lr

TOLERANCE = 1e-5
CLASSES, FEATURES, BATCH = 4, 20, 32
INTRO = (
    "`DoGController` against the authors' `DoG` (PyPI `dog-optimizer`, "
    "github.com/formll/dog), `DAdaptSGDController` against the authors' `DAdaptSGD` "
    "(PyPI `dadaptation`, momentum 0, and 0.9 with Keras's SGD(momentum=0.9)) and "
    "`DoWGController` against `optax.contrib.dowg` (JAX, float64, run in a subprocess by "
    "the Python of another venv, `--optax_python`), same data and initial weights, "
    "float64 weights on both sides, plain SGD unless a row says. Needs torch, "
    "dog-optimizer and dadaptation in a scratch venv, jax and optax in another."
)

# "method, setting", ours, the reference's arguments; the optimizer is Keras's SGD with
# the reference's momentum (0 but for D-Adapt SGD's momentum form).
CASES = [
    ("DoG, reps_rel 1e-6", lambda: DoGController(), {"reps_rel": 1e-6}),
    ("DoG, reps_rel 1e-4", lambda: DoGController(reps_rel=1e-4), {"reps_rel": 1e-4}),
    ("DoG, init_eta 0.01", lambda: DoGController(init_eta=0.01), {"init_eta": 0.01}),
    ("DAdaptSGD, defaults", lambda: DAdaptSGDController(), {}),
    ("DAdaptSGD, growth 1.05", lambda: DAdaptSGDController(growth_rate=1.05),
     {"growth_rate": 1.05}),
    ("DAdaptSGD, growth 1.02", lambda: DAdaptSGDController(growth_rate=1.02),
     {"growth_rate": 1.02}),
    ("DAdaptSGD, growth 1.01", lambda: DAdaptSGDController(growth_rate=1.01),
     {"growth_rate": 1.01}),
    ("DAdaptSGD, momentum 0.9, growth 1.01",
     lambda: DAdaptSGDController(growth_rate=1.01, momentum=0.9),
     {"growth_rate": 1.01, "momentum": 0.9}),
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
    """The authors' DAdaptSGD (momentum 0 unless `kwargs` says); returns (step sizes,
    weights after each batch, steps whose `d` growth was capped by `growth_rate`)."""
    import torch
    from dadaptation import DAdaptSGD

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = DAdaptSGD([w], **{"momentum": 0.0, **kwargs})
    growth, momentum = kwargs.get("growth_rate", math.inf), kwargs.get("momentum", 0.0)
    etas, weights, capped = [], [], 0
    for xb, yb in zip(x, y, strict=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        group = optimizer.param_groups[0]
        d = group["d"]
        optimizer.step()
        capped += group["d"] == d * growth > d
        # The step it just took: z moves by d lr / g0_norm, the weights by (1 - momentum)
        # times that (plus the momentum of the average), Keras's heavy-ball LR.
        etas.append((1 - momentum) * d * group["lr"] / group["g0_norm"])
        weights.append(w.detach().numpy().copy())
    return np.array(etas), np.array(weights), capped


# The DoWG reference, run by the optax venv's Python: argv = in.npz (x, y, w0), the
# arguments of optax.contrib.dowg as JSON, out.npz (etas, weights).
OPTAX_SIDE = r"""
import json, sys

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np
import optax

data = np.load(sys.argv[1])
kwargs = json.loads(sys.argv[2])
eps = kwargs.get("eps", 1e-4)  # scale_by_dowg's default
# The optimizer itself: chain(identity, scale_by_dowg, scale_by_learning_rate(1.0)).
optimizer = optax.contrib.dowg(**kwargs)


def loss_fn(w, xb, yb):
    return optax.losses.softmax_cross_entropy_with_integer_labels(xb @ w, yb).mean()


@jax.jit
def step(w, state, xb, yb):
    grad = jax.grad(loss_fn)(w, xb, yb)
    updates, state = optimizer.update(grad, state, w)
    # The learning rate scale_by_dowg's update_fn just computed, from its new state.
    lr = optax.tree.get(state, "estim_sq_dist") / (
        jax.numpy.sqrt(optax.tree.get(state, "weighted_sq_norm_grads")) + eps
    )
    return optax.apply_updates(w, updates), state, lr, grad, updates


w = jax.numpy.asarray(data["w0"])
assert w.dtype == np.float64, w.dtype
state = optimizer.init(w)
etas, weights = [], []
for xb, yb in zip(data["x"], data["y"], strict=True):
    w, state, lr, grad, updates = step(w, state, xb, yb)
    np.testing.assert_allclose(np.asarray(updates), -float(lr) * np.asarray(grad), rtol=1e-12)
    etas.append(float(lr))
    weights.append(np.asarray(w, dtype=np.float64))
np.savez(sys.argv[3], etas=np.array(etas), weights=np.array(weights))
"""

OPTAX_VERSIONS = (
    "import jax, numpy, optax; print(f'optax {optax.__version__} ({optax.__file__}), "
    "jax {jax.__version__}, numpy {numpy.__version__}')"
)


def dowg_run(kwargs, x, y, w0, optax_python):
    """optax.contrib.dowg in float64 (a subprocess in `optax_python`); returns (step
    sizes, weights after each batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        side = os.path.join(tmp, "optax_side.py")
        np.savez(inputs, x=x.astype(np.float64), y=y, w0=w0.astype(np.float64))
        with open(side, "w") as f:
            f.write(OPTAX_SIDE)
        command = [optax_python, side, inputs, json.dumps(kwargs), outputs]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"the optax side failed ({optax_python}):\n{done.stderr}")
        with np.load(outputs) as out:
            return out["etas"], out["weights"]


def our_run(make_controller, x, y, w0, momentum=0.0):
    """The controller and Keras SGD (float64 weights) through the per-batch path."""
    w = tf.Variable(w0, name="w")
    optimizer = keras.optimizers.SGD(0.0, momentum=momentum)
    optimizer.build([w])
    controller = make_controller()
    controller.check_optimizer(optimizer)
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
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--optax_python",
        default=os.environ.get("OPTAX_PYTHON"),
        help="a Python with jax and optax for the DoWG rows ($OPTAX_PYTHON; none: skipped)",
    )
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import dadaptation
        import dog
        import torch
    except ImportError as e:
        sys.exit(f"needs torch, dog-optimizer, dadaptation (not lrresearch dependencies): {e}")
    optax = "optax not installed (no --optax_python)"  # the DoWG rows are skipped
    if args.optax_python:
        command = [args.optax_python, "-c", OPTAX_VERSIONS]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"--optax_python={args.optax_python} cannot import optax:\n{done.stderr}")
        optax = f"{done.stdout.strip()} in {args.optax_python}"
    import importlib.metadata as metadata

    print(
        f"versions: torch {torch.__version__}, dog-optimizer {metadata.version('dog-optimizer')} "
        f"({dog.__file__}), dadaptation {metadata.version('dadaptation')} "
        f"({dadaptation.__file__}), numpy {np.__version__}; {optax}"
    )
    print(
        f"problem: softmax regression, {FEATURES}+1 x {CLASSES} float64 weights, batch "
        f"{BATCH}, {args.steps} batches, Keras SGD\n"
    )
    x, y, w0 = problem(args.steps)
    print(
        "| method | step size range (ours) | capped steps | max rel step-size diff "
        "| max rel weight diff |"
    )
    print("|---|---|---|---|---|")
    failed = False
    for name, make, kwargs in CASES:
        method = name.split(",")[0]  # "DoG", "DAdaptSGD" or "DoWG"
        if method == "DoWG" and not args.optax_python:
            print(f"| {name} | skipped: optax not installed | | | |")
            continue
        capped = ""
        if method == "DoWG":
            ref_etas, ref_w = dowg_run(kwargs, x, y, w0, args.optax_python)
        elif method == "DoG":
            ref_etas, ref_w = dog_run(kwargs, x, y, w0)
        else:
            ref_etas, ref_w, capped = dadapt_run(kwargs, x, y, w0)
        etas, weights = our_run(make, x, y, w0, kwargs.get("momentum", 0.0))
        eta_diff = float(np.max(np.abs(etas - ref_etas) / np.abs(ref_etas)))
        scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / scale))
        print(
            f"| {name} | {etas.min():.4g} .. {etas.max():.4g} | {capped} | {eta_diff:.2e} "
            f"| {w_diff:.2e} |"
        )
        failed |= eta_diff > TOLERANCE or w_diff > TOLERANCE
    print(
        "\nweight diff: max over batches of max|w_ours - w_ref| / max|w_ref|; capped "
        "steps: batches whose d grew by exactly growth_rate (the authors' d)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "DoG, D-Adaptation SGD and DoWG against their references"
    sys.exit(run_and_write(main, "docs/parity/parameter_free.md", title, INTRO))
