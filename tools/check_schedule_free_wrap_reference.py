"""Compares `ScheduleFreeWrapper` and `ScheduleFreeRAdam` with the authors' Schedule-Free
code and with optax's `contrib.schedule_free`.

References (never lrresearch dependencies):
  * PyPI `schedulefree` (github.com/facebookresearch/schedule_free): `ScheduleFreeWrapper`
    (`wrap_schedulefree.py`, the memory-efficient one) around torch's SGD / Adam /
    AdamW, `ScheduleFreeWrapperReference` once, and `RAdamScheduleFree`
    (`radam_schedulefree.py`, foreach path); run in this process with torch;
  * optax `contrib.schedule_free` around `optax.sgd` / `adam` / `adamw`, run by
    `tools/schedule_free_optax_run.py` in a venv with jax and optax (`--jax_python`).
Every side trains the same softmax regression (`check_parameter_free_reference.problem`,
float64) on the same minibatches from the same weights, the LR of each batch rounded to
float32 (as Keras's LR variable holds it). The bases: Keras's SGD, `MomentumSGD`
(torch's momentum form), Adam and AdamW on our side; torch's SGD (momentum 0 or 0.5),
Adam and AdamW on theirs, with torch's `eps` set each step to Keras's `epsilon / sqrt(1 -
beta2^t)` ('matched eps': Keras adds epsilon before the bias correction) and betas float32
holds exactly unless the row says (0.9, 0.999) (Keras rounds them through float32).

Prints, per setting, the largest relative difference over the run of the weights `y`
after each batch, of the evaluation weights `x` after the last (the authors' `eval()`,
optax's `schedule_free_eval_params`, our `swap_to_eval`) and, for the torch rows, of the
step size (`optimizer/effective_lr` against the LR the authors' code used, RAdam's
`scheduled_lr`).

Run (torch from /tmp/numerics_refpkgs, schedulefree from `pip install --no-deps
--target /tmp/ref_sf schedulefree`):
  PYTHONPATH=/tmp/numerics_refpkgs:/tmp/ref_sf python \\
      tools/check_schedule_free_wrap_reference.py [--steps=400] \\
      [--jax_python=/tmp/numerics_optaxvenv/bin/python]
Exits 1 if a checked row differs by more than 1e-5.
"""

from __future__ import annotations

import argparse
import functools
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
from check_parameter_free_reference import problem
from measured_page import run_and_write

from lrresearch.optimizers import MomentumSGD, ScheduleFreeRAdam, ScheduleFreeWrapper

TOLERANCE = 1e-5
HERE = os.path.dirname(os.path.abspath(__file__))
INTRO = (
    "`ScheduleFreeWrapper` and `ScheduleFreeRAdam` against the authors' "
    "`ScheduleFreeWrapper` and `RAdamScheduleFree` (PyPI `schedulefree`, "
    "github.com/facebookresearch/schedule_free) and optax's `contrib.schedule_free`, same "
    "data and initial weights, float64 weights on both sides (the float32 row: both sides "
    "float32), the LR of every batch float32-rounded for all. The wrapped bases: Keras's "
    "SGD / Adam / AdamW and `MomentumSGD` against torch's SGD / Adam / AdamW and optax's "
    "sgd / adam / adamw. Two differences of the base Adams, not of Schedule-Free: Keras "
    "adds epsilon before the bias correction (torch and optax after; 'matched eps' sets "
    "theirs to Keras's `epsilon / sqrt(1 - beta2^t)` every step), and Keras rounds the "
    "betas through float32 (rows use 0.875 and 1 - 2^-10 unless they say (0.9, 0.999)). "
    "The authors' `ScheduleFreeWrapper` cannot wrap torch's Adam or AdamW as published: "
    "it puts `z` in the base's `state[p]` before the base's first step, so Adam's "
    "`_init_group` (`if len(state) == 0`) never creates `exp_avg` (KeyError); the script "
    "seeds Adam's state (step 0, zero moments) as Adam itself would, before that step. "
    "The optax rows: its wrapper evaluates its own LR schedule at `step_count`, which "
    "starts at 1, while the base's starts at 0, so with an LR that changes the average's "
    "weights use the next batch's LR ('optax indexing', reported); the checked rows "
    "feed it the LR of the batch applied. optax calls its base at `y`, so AdamW's decay "
    "is taken at `y` there, at `z` in the authors' code and ours (reported). optax has no "
    "`r` and no `weight_decay_at_y`."
)

EXACT = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}
DEFAULT = {"beta_1": 0.9, "beta_2": 0.999}
KERAS_EPSILON = 1e-7
WEIGHT_DECAY = 2.0**-6


def constant(value: float):
    return lambda t, steps: value


def warmup(peak: float, batches: int = 50):
    """Linear warmup over `batches` from peak / batches, then constant."""
    return lambda t, steps: peak * min(1.0, (t + 1) / batches)


def wavy(peak: float):
    """Warmup over 40 batches, then `peak * (1 + 0.5 sin(t / 9))`: changes every batch."""
    return lambda t, steps: peak * min(1.0, (t + 1) / 40) * (1 + 0.5 * math.sin(t / 9))


def lrs_of(schedule, steps: int) -> np.ndarray:
    return np.array([schedule(t, steps) for t in range(steps)], np.float32).astype(np.float64)


# Wrapper rows: (name, base, base betas, wrapper kwargs, schedule, checked). Bases:
# "sgd", "torch momentum" (ours MomentumSGD(0.5), torch SGD(momentum=0.5)), "keras
# momentum" (Keras's SGD(momentum=0.5), reported), "adam", "adamw"; "reference" in the
# name runs the authors' ScheduleFreeWrapperReference instead.
WRAPPER_CASES = [
    ("SGD, defaults (momentum 0.9), LR 0.5", "sgd", {}, {}, constant(0.5), True),
    ("SGD, momentum 0.8, weight_decay_at_y 0.01, warmup 50", "sgd", {},
     {"momentum": 0.8, "weight_decay_at_y": 0.01}, warmup(0.5), True),
    ("SGD, weight_lr_power 0, r 1, LR per batch", "sgd", {},
     {"weight_lr_power": 0.0, "r": 1.0}, wavy(0.3), True),
    ("SGD, weight_decay_at_y 0.01, authors' ScheduleFreeWrapperReference", "sgd", {},
     {"weight_decay_at_y": 0.01}, warmup(0.5), True),
    ("torch momentum 0.5 as @MomentumSGD, LR per batch", "torch momentum", {}, {},
     wavy(0.2), True),
    ("Keras momentum 0.5 ('momentum' form), LR per batch (reported only)", "keras momentum",
     {}, {}, wavy(0.2), False),
    ("Adam beta_1 0 (exact beta_2), matched eps, warmup 50", "adam",
     {"beta_1": 0.0, "beta_2": EXACT["beta_2"]}, {}, warmup(0.01), True),
    ("Adam (exact betas), matched eps, momentum 0.95, weight_decay_at_y 0.05, r 2", "adam",
     EXACT, {"momentum": 0.95, "weight_decay_at_y": 0.05, "r": 2.0}, constant(0.01), True),
    ("AdamW wd 2^-6 (exact betas), matched eps, LR per batch", "adamw", EXACT, {},
     wavy(0.01), True),
    ("Adam (0.9, 0.999), matched eps, LR per batch", "adam", DEFAULT, {}, wavy(0.01), True),
]  # fmt: skip

# RAdam rows: (name, kwargs, schedule, float32).
RADAM_CASES = [
    ("RAdam, defaults (lr 0.0025, silent SGD phase)", {}, constant(0.0025), False),
    ("RAdam, silent_sgd_phase False, lr 0.005", {"silent_sgd_phase": False},
     constant(0.005), False),
    ("RAdam, betas (0.95, 0.99), weight decay 0.01", {"beta_1": 0.95, "beta_2": 0.99,
     "weight_decay": 0.01}, constant(0.005), False),
    ("RAdam, warmup 50 (LR), not silent, weight decay 0.1", {"silent_sgd_phase": False,
     "weight_decay": 0.1}, warmup(0.005), False),
    ("RAdam, beta_2 0.8, r 1, weight_lr_power 0, eps 1e-6, LR per batch",
     {"beta_2": 0.8, "r": 1.0, "weight_lr_power": 0.0, "epsilon": 1e-6}, wavy(0.005), False),
    ("RAdam, float32, LR per batch", {}, wavy(0.005), True),
]  # fmt: skip

# optax rows: (name, base, base betas, momentum, weight_lr_power, schedule, shift,
# checked); shift 1: the wrapper's schedule gets the LR of the batch applied.
OPTAX_CASES = [
    ("optax, sgd, b1 0.9, LR 0.5", "sgd", {}, 0.9, 2.0, constant(0.5), 1, True),
    ("optax, sgd, b1 0.7, weight_lr_power 1, warmup 50", "sgd", {}, 0.7, 1.0, warmup(0.5),
     1, True),
    ("optax, sgd, warmup 50, optax indexing (reported only)", "sgd", {}, 0.9, 2.0,
     warmup(0.5), 0, False),
    ("optax, adam b1 0 (exact b2), matched eps, LR per batch", "adam",
     {"beta_1": 0.0, "beta_2": EXACT["beta_2"]}, 0.9, 2.0, wavy(0.01), 1, True),
    ("optax, adamw wd 2^-6: decay at y (reported only)", "adamw", EXACT, 0.9, 2.0,
     constant(0.01), 1, False),
]  # fmt: skip


# -- ours -----------------------------------------------------------------------------


def keras_base(base: str, betas: dict):
    """Our base optimizer for a row (see WRAPPER_CASES)."""
    if base == "sgd":
        return "sgd"
    if base.endswith("momentum"):
        cls = MomentumSGD if base == "torch momentum" else keras.optimizers.SGD
        return functools.partial(cls, momentum=0.5)
    decay = {"weight_decay": WEIGHT_DECAY} if base == "adamw" else {}
    cls = keras.optimizers.Adam if base == "adam" else keras.optimizers.AdamW
    return functools.partial(cls, epsilon=KERAS_EPSILON, **betas, **decay)


def our_run(optimizer, lrs, x, y, w0):
    """Ours, one compiled step per batch; (weights y per batch, step sizes, x)."""
    w = tf.Variable(w0, name="w")
    optimizer.build([w])

    @tf.function
    def step(lr, xb, yb):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=xb @ w)
            )
        optimizer.apply(tape.gradient(loss, [w]), [w])
        return tf.identity(w), optimizer.effective_lr.value

    out = [step(np.float32(lr), xb, yb) for lr, xb, yb in zip(lrs, x, y, strict=True)]
    optimizer.swap_to_eval([w])
    weights = np.array([o[0].numpy() for o in out])
    return weights, np.array([float(o[1]) for o in out]), w.numpy().copy()


# -- the authors' torch code ----------------------------------------------------------


def torch_base(base: str, betas: dict, params, lr: float):
    import torch
    from torch.optim.optimizer import _get_scalar_dtype

    if base == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if base.endswith("momentum"):
        return torch.optim.SGD(params, lr=lr, momentum=0.5)
    cls = torch.optim.Adam if base == "adam" else torch.optim.AdamW
    decay = {"weight_decay": WEIGHT_DECAY} if base == "adamw" else {"weight_decay": 0.0}
    optimizer = cls(params, lr=lr, betas=(betas["beta_1"], betas["beta_2"]), **decay)
    for p in params:  # Adam's own first-step init (see INTRO: the wrapper pre-empts it)
        optimizer.state[p].update(
            step=torch.tensor(0.0, dtype=_get_scalar_dtype()),
            exp_avg=torch.zeros_like(p),
            exp_avg_sq=torch.zeros_like(p),
        )
    return optimizer


def torch_loop(optimizer, group, lrs, x, y, w, before_step=None):
    """Trains `w` with `optimizer` (already in train mode); (weights, LRs used, x)."""
    import torch

    weights, used = [], []
    for t, (lr, xb, yb) in enumerate(zip(lrs, x, y, strict=True)):
        group["lr"] = float(lr)
        if before_step is not None:
            before_step(t)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        optimizer.step()
        weights.append(w.detach().numpy().copy())
        used.append(group.get("scheduled_lr", float(lr)))
    optimizer.eval()
    return np.array(weights), np.array(used), w.detach().numpy().copy()


def authors_wrapper_run(name, base, betas, kwargs, lrs, x, y, w0):
    import schedulefree
    import torch

    w = torch.nn.Parameter(torch.tensor(w0))
    inner = torch_base(base, betas, [w], float(lrs[0]))
    cls = (schedulefree.ScheduleFreeWrapperReference if "Reference" in name
           else schedulefree.ScheduleFreeWrapper)  # fmt: skip
    optimizer = cls(inner, **kwargs)
    optimizer.train()
    group = inner.param_groups[0]

    def matched_eps(t: int) -> None:
        if base in ("adam", "adamw"):
            group["eps"] = KERAS_EPSILON / math.sqrt(1 - betas["beta_2"] ** (t + 1))

    return torch_loop(optimizer, group, lrs, x, y, w, matched_eps)


def authors_radam_run(kwargs, lrs, x, y, w0):
    import schedulefree
    import torch

    kwargs = dict(kwargs)
    betas = (kwargs.pop("beta_1", 0.9), kwargs.pop("beta_2", 0.999))
    if "epsilon" in kwargs:
        kwargs["eps"] = kwargs.pop("epsilon")
    w = torch.nn.Parameter(torch.tensor(w0))
    optimizer = schedulefree.RAdamScheduleFree([w], lr=float(lrs[0]), betas=betas, **kwargs)
    optimizer.train()
    return torch_loop(optimizer, optimizer.param_groups[0], lrs, x, y, w)


# -- comparison -----------------------------------------------------------------------


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """max over batches of max|ours - ref| / max|ref| (per batch)."""
    ours, reference = ours.reshape(len(ours), -1), reference.reshape(len(reference), -1)
    scale = np.max(np.abs(reference), axis=1)
    return float(np.max(np.max(np.abs(ours - reference), axis=1) / scale))


def step_diff(ours: np.ndarray, reference: np.ndarray) -> float:
    """max relative difference of the step sizes, 0 where both are 0 (RAdam's silent
    SGD phase)."""
    scale = np.where(reference == 0, 1.0, np.abs(reference))
    return float(np.max(np.abs(ours - reference) / scale))


def differences(our_y, our_lr, our_x, ref_y, ref_lr, ref_x) -> tuple[float, float, float]:
    """(y diff, step-size diff, x diff) of one row."""
    return relative(our_y, ref_y), step_diff(our_lr, ref_lr), relative(our_x[None], ref_x[None])


def row(name: str, diffs: tuple[float, ...], checked: bool) -> bool:
    """Prints a table row; returns whether a checked row failed."""
    cells = " | ".join("-" if d is None else f"{d:.2e}" for d in diffs)
    print(f"| {name} | {cells} |")
    return checked and max(d for d in diffs if d is not None) > TOLERANCE


def torch_rows(x, y, w0) -> bool:
    failed = False
    steps = len(x)
    for name, base, betas, kwargs, schedule, checked in WRAPPER_CASES:
        lrs = lrs_of(schedule, steps)
        ref_y, ref_lr, ref_x = authors_wrapper_run(name, base, betas, kwargs, lrs, x, y, w0)
        optimizer = ScheduleFreeWrapper(float(lrs[0]), keras_base(base, betas), **kwargs)
        our_y, our_lr, our_x = our_run(optimizer, lrs, x, y, w0)
        failed |= row(name, differences(our_y, our_lr, our_x, ref_y, ref_lr, ref_x), checked)
    for name, kwargs, schedule, float32 in RADAM_CASES:
        dtype = np.float32 if float32 else np.float64
        xs, w = x.astype(dtype), w0.astype(dtype)
        lrs = lrs_of(schedule, steps)
        ref_y, ref_lr, ref_x = authors_radam_run(kwargs, lrs, xs, y, w)
        optimizer = ScheduleFreeRAdam(float(lrs[0]), **kwargs)
        our_y, our_lr, our_x = our_run(optimizer, lrs, xs, y, w)
        failed |= row(name, differences(our_y, our_lr, our_x, ref_y, ref_lr, ref_x), True)
    return failed


def optax_rows(x, y, w0, jax_python: str) -> bool:
    steps, failed = len(x), False
    cases, data = [], {"x": x, "y": y, "w0": w0}
    for name, base, betas, momentum, power, schedule, shift, _ in OPTAX_CASES:
        data[f"lr/{name}"] = lrs_of(schedule, steps)
        cases.append({"name": name, "base": base, "b1": betas.get("beta_1"),
                      "b2": betas.get("beta_2"), "keras_epsilon": KERAS_EPSILON,
                      "weight_decay": WEIGHT_DECAY, "momentum": momentum,
                      "weight_lr_power": power, "shift": shift})  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        spec, inputs, out = (os.path.join(scratch, n) for n in ("c.json", "d.npz", "o.npz"))
        with open(spec, "w") as f:
            json.dump(cases, f)
        np.savez(inputs, **data)
        runner = os.path.join(HERE, "schedule_free_optax_run.py")
        subprocess.run([jax_python, runner, spec, inputs, out], check=True)
        with np.load(out) as loaded:
            results = {k: loaded[k] for k in loaded.files}
    for name, base, betas, momentum, power, _, _, checked in OPTAX_CASES:
        lrs = data[f"lr/{name}"]
        optimizer = ScheduleFreeWrapper(float(lrs[0]), keras_base(base, betas),
                                        momentum=momentum, weight_lr_power=power)  # fmt: skip
        our_y, _, our_x = our_run(optimizer, lrs, x, y, w0)
        diffs = (relative(our_y, results[f"y/{name}"]), None,
                 relative(our_x[None], results[f"x/{name}"][None]))  # fmt: skip
        failed |= row(name, diffs, checked)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--jax_python", default="/tmp/numerics_optaxvenv/bin/python")
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import schedulefree
        import torch
    except ImportError as e:
        sys.exit(f"needs torch and schedulefree (not lrresearch dependencies): {e}")
    import importlib.metadata as metadata

    optax_version = subprocess.run(
        [args.jax_python, "-c", "import jax, optax; print(f'optax {optax.__version__}, "
         "jax {jax.__version__}')"], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(
        f"versions: torch {torch.__version__}, schedulefree {metadata.version('schedulefree')} "
        f"({schedulefree.__file__}), {optax_version} ({args.jax_python}), numpy {np.__version__}"
    )
    x, y, w0 = problem(args.steps, seed=1)
    print(
        f"problem: softmax regression, {w0.shape[0]} x {w0.shape[1]} float64 weights, batch "
        f"{x.shape[1]}, {args.steps} batches; 'warmup 50': linear from lr/50; 'LR per batch': "
        "warmup over 40 batches, then lr (1 + 0.5 sin(t / 9))\n"
    )
    print("| setting | max rel y diff | max rel step-size diff | rel x diff (eval) |")
    print("|---|---|---|---|")
    failed = torch_rows(x, y, w0)
    failed |= optax_rows(x, y, w0, args.jax_python)
    print(
        "\ny diff: max over batches of max|w_ours - w_ref| / max|w_ref|; x diff: the same for "
        "the evaluation weights after the last batch; step size: our optimizer/effective_lr "
        "against the LR the authors' code stepped with (RAdam: its scheduled_lr; 0 in a "
        "silent SGD phase counts as equal). Rows marked 'reported only' are not checked."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "Schedule-Free wrapper and Schedule-Free RAdam against the authors' code and optax"
    sys.exit(run_and_write(main, "docs/parity/schedule_free_wrap.md", title, INTRO))
