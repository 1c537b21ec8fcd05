"""Compares `MoMo` and `MoMoAdam` with the authors' torch code and with optax's.

References (not dependencies of lrresearch):
  * the authors' `momo.Momo` and `momo.MomoAdam` (PyPI `momo-opt` 0.1.0, the same files
    as github.com/fabian-sp/MoMo at 7be52f2), with torch 2.14 in float64:
    `pip install --no-deps --target /tmp/ref_momo momo-opt` (with lrresearch's pip);
  * optax's `contrib.momo` / `contrib.momo_adam` in a scratch venv with jax
    (`--jax_python`, default /tmp/numerics_optaxvenv/bin/python), run as a subprocess
    with `jax_enable_x64`, which writes its weights to a .npz file.

All three train the softmax regression of `check_parameter_free_reference.problem` (21 x
4 float64 weights, the same minibatches and initial weights); the loss handed to each
optimizer is the batch's mean cross-entropy. Ours runs in a compiled step with float64
weights, the loss handed over by `set_batch_loss` as the trainer does. LRs are float32
numbers, so Keras's float32 LR variable holds exactly the references' LR.

The authors' code is checked (step size tau and weights); optax is reported: it matches
the authors' without weight decay and without bias correction (optax has none), and its
weight decay is another form (`x / c - tau d` instead of `(x - tau d) / c`), so those rows
show how far apart the two libraries are. optax exposes no tau: weights only.

Run (lrresearch's venv):
  PYTHONPATH=/tmp/numerics_refpkgs:/tmp/ref_momo:. python tools/check_momo_reference.py
Exits 1 if an authors' row differs by more than 1e-9 (step size, lower bound or weights).
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

import numpy as np
import tensorflow as tf
from check_parameter_free_reference import problem
from measured_page import run_and_write

from lrresearch.optimizers import MoMo, MoMoAdam

TOLERANCE = 1e-9
INTRO = (
    "`MoMo` and `MoMoAdam` against the authors' torch code (PyPI `momo-opt` 0.1.0 = "
    "github.com/fabian-sp/MoMo at commit 7be52f2, `momo/momo.py` and `momo/momo_adam.py`) "
    "and optax 0.2.8's `contrib.momo` / `contrib.momo_adam`, same data and initial "
    "weights, float64 on all sides. The authors' code is checked (tau, the step size "
    "applied, and the weights); optax is reported (weights only: it exposes no tau). "
    "optax has no `bias_correction` and another weight decay (`x / c - tau d` where the "
    "authors write `(x - tau d) / c`, MoMo-Adam's divide=True, or `x (1 - lr wd) - tau "
    "d / D`, divide=False): the rows with either show how far apart the libraries are, "
    "and we follow the authors'. 'LR per batch' is a warmup over 50 batches then a cosine "
    "to a tenth, the LR of each batch set by the caller as our controllers do."
)


def f32(value: float) -> float:
    return float(np.float32(value))


def constant(lr: float):
    return lambda t, steps: f32(lr)


def changing(lr: float):
    """Warmup over 50 batches, then cosine from `lr` to `lr / 10` (float32 numbers)."""

    def schedule(t: int, steps: int) -> float:
        warmup = min(1.0, (t + 1) / 50)
        return f32(lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * t / steps))))

    return schedule


# name, class ("momo" / "adam"), our arguments, LR schedule. The authors' arguments are
# the same under their names (`lb`, `betas`, `eps`).
CASES = [
    ("MoMo lr 0.01", "momo", {}, constant(0.01)),
    ("MoMo lr 1 (default)", "momo", {}, constant(1.0)),
    ("MoMo lr 100", "momo", {}, constant(100.0)),
    ("MoMo lr 10, beta 0.5", "momo", {"beta": 0.5}, constant(10.0)),
    ("MoMo lr 1, bias_correction", "momo", {"bias_correction": True}, constant(1.0)),
    ("MoMo lr 1, weight_decay 0.01", "momo", {"weight_decay": 0.01}, constant(1.0)),
    ("MoMo lr 10, use_fstar", "momo", {"use_fstar": True}, constant(10.0)),
    ("MoMo lr 10, use_fstar, lb 0.8 (above the final loss)", "momo",
     {"use_fstar": True, "lower_bound": 0.8}, constant(10.0)),
    ("MoMo lr 1, lb 0.5, no use_fstar", "momo", {"lower_bound": 0.5}, constant(1.0)),
    ("MoMo use_fstar, bias_correction, wd 0.001, LR per batch from 3", "momo",
     {"use_fstar": True, "bias_correction": True, "weight_decay": 0.001}, changing(3.0)),
    ("MoMoAdam lr 0.001", "adam", {}, constant(0.001)),
    ("MoMoAdam lr 0.01 (default)", "adam", {}, constant(0.01)),
    ("MoMoAdam lr 1", "adam", {}, constant(1.0)),
    ("MoMoAdam lr 0.1, betas (0.8, 0.99), eps 1e-6", "adam",
     {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}, constant(0.1)),
    ("MoMoAdam lr 0.1, weight_decay 0.1 (divide)", "adam", {"weight_decay": 0.1},
     constant(0.1)),
    ("MoMoAdam lr 0.1, weight_decay 0.1, divide=False", "adam",
     {"weight_decay": 0.1, "divide": False}, constant(0.1)),
    ("MoMoAdam lr 1, use_fstar", "adam", {"use_fstar": True}, constant(1.0)),
    ("MoMoAdam use_fstar, lb 0.6, wd 0.01, LR per batch from 0.3", "adam",
     {"use_fstar": True, "lower_bound": 0.6, "weight_decay": 0.01}, changing(0.3)),
]  # fmt: skip


def torch_arguments(kind: str, kwargs: dict) -> dict:
    """Our arguments under the authors' names."""
    names = {"lower_bound": "lb", "epsilon": "eps"}
    out = {names.get(k, k): v for k, v in kwargs.items() if k not in ("beta_1", "beta_2")}
    if kind == "adam":
        out["betas"] = (kwargs.get("beta_1", 0.9), kwargs.get("beta_2", 0.999))
    return out


def reference_run(kind, kwargs, schedule, x, y, w0):
    """The authors' optimizer, float64; (tau per batch, weights after each batch, lower
    bound after each batch)."""
    import torch
    from momo import Momo, MomoAdam

    previous = torch.get_default_dtype()
    # Their `gamma` state is created with the default dtype (`torch.zeros(1)`,
    # `torch.tensor(0.)`): float32 unless the default is float64.
    torch.set_default_dtype(torch.float64)
    try:
        w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
        cls = Momo if kind == "momo" else MomoAdam
        optimizer = cls([w], lr=schedule(0, len(x)), **torch_arguments(kind, kwargs))
        group = optimizer.param_groups[0]
        taus, weights, bounds = [], [], []
        for t, (xb, yb) in enumerate(zip(x, y, strict=True)):
            group["lr"] = schedule(t, len(x))
            before = w.detach().clone()
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
            loss.backward()
            optimizer.step(loss=loss)
            taus.append(_tau(optimizer, kind, kwargs, before, w.detach(), group["lr"]))
            weights.append(w.detach().numpy().copy())
            bounds.append(float(optimizer.lb))
    finally:
        torch.set_default_dtype(previous)
    return np.array(taus), np.array(weights), np.array(bounds)


def _tau(optimizer, kind, kwargs, before, after, lr) -> float:
    """tau, read off the authors' update (their code keeps no record of it): the
    weights moved by `-tau * direction` (then the decay)."""
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    wd = kwargs.get("weight_decay", 0.0)
    direction = state["grad_avg"]
    moved = after.clone()
    if kind == "adam":
        k = optimizer._number_steps
        beta_2 = kwargs.get("beta_2", 0.999)
        eps = kwargs.get("epsilon", 1e-8)
        direction = direction / (state["grad_avg_sq"].div(1 - beta_2**k).sqrt().add(eps))
        if wd > 0 and not kwargs.get("divide", True):
            before = before * (1 - wd * lr)
        elif wd > 0:
            moved = moved * (1 + lr * wd)
    elif wd > 0:
        moved = moved * (1 + lr * wd)
    step = (before - moved).flatten()
    direction = direction.flatten()
    return float(step @ direction / (direction @ direction))


OPTAX_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, optax
from optax import contrib
data = np.load(sys.argv[1])
x, y, w0 = data["x"], data["y"], data["w0"]
out = {}
for name, spec in json.loads(open(sys.argv[2]).read()).items():
    lrs = jnp.asarray(spec["lrs"], jnp.float64)
    kw = dict(spec["kwargs"])
    schedule = lambda count: lrs[count]
    if spec["kind"] == "momo":
        opt = contrib.momo(schedule, beta=kw.get("beta", 0.9),
                           lower_bound=kw.get("lower_bound", 0.0),
                           weight_decay=kw.get("weight_decay", 0.0),
                           adapt_lower_bound=kw.get("use_fstar", False))
    else:
        opt = contrib.momo_adam(schedule, b1=kw.get("beta_1", 0.9), b2=kw.get("beta_2", 0.999),
                                eps=kw.get("epsilon", 1e-8), lower_bound=kw.get("lower_bound", 0.0),
                                weight_decay=kw.get("weight_decay", 0.0),
                                adapt_lower_bound=kw.get("use_fstar", False))
    def loss_fn(w, xb, yb):
        logits = xb @ w
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))
    @jax.jit
    def step(w, state, xb, yb):
        value, grad = jax.value_and_grad(loss_fn)(w, xb, yb)
        updates, state = opt.update(grad, state, w, value=value)
        return optax.apply_updates(w, updates), state
    w = jnp.asarray(w0); state = opt.init(w); ws = []
    for xb, yb in zip(x, y):
        w, state = step(w, state, xb, yb); ws.append(np.asarray(w))
    out[name] = np.stack(ws)
np.savez(sys.argv[3], **out)
print(f"jax {jax.__version__}, optax {optax.__version__}")
"""


def optax_runs(python: str, x, y, w0, steps: int) -> tuple[dict, str]:
    """optax's weights after each batch, per case name (skipping bias_correction /
    divide=False rows, which optax has not), and its versions line."""
    specs = {
        name: {"kind": kind, "kwargs": kwargs, "lrs": [schedule(t, steps) for t in range(steps)]}
        for name, kind, kwargs, schedule in CASES
        if not kwargs.get("bias_correction") and kwargs.get("divide", True)
    }
    with tempfile.TemporaryDirectory() as tmp:
        data, spec, out = (os.path.join(tmp, n) for n in ("data.npz", "spec.json", "out.npz"))
        np.savez(data, x=x, y=y, w0=w0)
        with open(spec, "w") as f:
            json.dump(specs, f)
        run = subprocess.run([python, "-c", OPTAX_SCRIPT, data, spec, out],
                             capture_output=True, text=True, check=True)  # fmt: skip
        with np.load(out) as loaded:
            return {name: loaded[name] for name in loaded.files}, run.stdout.strip()


def our_run(kind, kwargs, schedule, x, y, w0):
    """Ours in a compiled step, float64 weights, the loss handed over; same outputs."""
    w = tf.Variable(w0, name="w")
    cls = MoMo if kind == "momo" else MoMoAdam
    optimizer = cls(schedule(0, len(x)), **kwargs)
    optimizer.build([w])

    @tf.function
    def step(lr, xb, yb):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            logits = xb @ w  # float64 throughout (Keras's losses compute in float32)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        optimizer.set_batch_loss(loss)
        optimizer.apply(tape.gradient(loss, [w]), [w])
        return tf.identity(optimizer.effective_lr), tf.identity(w), tf.identity(optimizer.lb)

    lrs = [schedule(t, len(x)) for t in range(len(x))]
    out = [step(tf.constant(lr, tf.float32), xb, yb) for lr, xb, yb in zip(lrs, x, y, strict=True)]
    taus, weights, bounds = zip(*out, strict=True)
    return tuple(np.array([np.asarray(v) for v in values]) for values in (taus, weights, bounds))


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """max over batches of max|ours - reference| / max|reference| (per batch)."""
    axes = tuple(range(1, reference.ndim))
    scale = np.max(np.abs(reference), axis=axes) if axes else np.abs(reference)
    diff = np.max(np.abs(ours - reference), axis=axes) if axes else np.abs(ours - reference)
    return float(np.max(diff / np.maximum(scale, 1e-300)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--jax_python", default="/tmp/numerics_optaxvenv/bin/python")
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import momo
        import torch
    except ImportError as e:
        sys.exit(f"needs torch and momo-opt (not lrresearch dependencies): {e}")
    import importlib.metadata as metadata

    x, y, w0 = problem(args.steps, seed=3)
    optax_weights, optax_versions = optax_runs(args.jax_python, x, y, w0, args.steps)
    print(
        f"versions: torch {torch.__version__}, momo-opt {metadata.version('momo-opt')} "
        f"({momo.__file__}), {optax_versions}, numpy {np.__version__}"
    )
    print(
        f"problem: softmax regression, {w0.shape[0]} x {w0.shape[1]} float64 weights, "
        f"batch {x.shape[1]}, {args.steps} batches (seed 3)\n"
    )
    print("| setting | tau range (ours) | lb range (ours) | max rel tau diff | max lb diff "
          "| max rel weight diff | optax: max rel weight diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    failed = False
    for name, kind, kwargs, schedule in CASES:
        ref_taus, ref_w, ref_lb = reference_run(kind, kwargs, schedule, x, y, w0)
        taus, weights, lb = our_run(kind, kwargs, schedule, x, y, w0)
        lb_diff = float(np.max(np.abs(lb - ref_lb)))
        floor = 1e-6 * np.max(np.abs(ref_taus))  # a tau of 0 is read off as ~1e-17
        tau_diff = float(np.max(np.abs(taus - ref_taus) / np.maximum(np.abs(ref_taus), floor)))
        w_diff = relative(weights, ref_w)
        theirs = optax_weights.get(name)
        optax_diff = "n/a (none in optax)" if theirs is None else f"{relative(theirs, ref_w):.2e}"
        print(f"| {name} | {taus.min():.4g} .. {taus.max():.4g} | {lb.min():.4g} .. "
              f"{lb.max():.4g} | {tau_diff:.2e} | {lb_diff:.2e} | {w_diff:.2e} "
              f"| {optax_diff} |")  # fmt: skip
        failed |= max(tau_diff, lb_diff, w_diff) > TOLERANCE
    print(
        "\nweight diff: max over batches of max|w - w_authors| / max|w_authors|; the "
        "authors' tau is read off their update (their code records none: a read-off "
        "error of ~1e-12 relative); lb diff: max over batches of |lb - lb_authors| (their "
        "`self.lb`) after each batch"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "MoMo and MoMo-Adam against the authors' code and optax"
    sys.exit(run_and_write(main, "docs/parity/momo.md", title, INTRO))
