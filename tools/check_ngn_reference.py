"""Compares `NGNController` (NGN and NGN-M), `AdaGradNormController` and the optimizer
`IAM` with their reference code.

References (not dependencies of lrresearch; torch from a scratch directory):
* NGN: the authors' class `NGN` of fabian-sp/step-back (`stepback/optim/ngn.py`),
  loaded from a checkout of that repository (`--stepback`, the folder holding
  `stepback/`); its package `__init__`s are not run, only `stepback/types.py` and the
  file itself. It has no lower bound: our `lb` is checked by handing it `loss - lb`.
* NGN again, and AdaGrad-Norm with `b0^2 = 1e-2`: Orvieto's own training script,
  aorvieto/NGN `train.py` (`--orvieto_ngn`, a checkout of that repository): the lines of
  its `'ngnm'` branch (with `beta1 = 0`: NGN) and of its `'adagrad'` branch (`beta1 =
  0`: AdaGrad-Norm, `preconditioner = lr / sqrt(1e-2 + sum ||g||^2)`) are cut out of
  the file at run time and executed as they are, with `model`, `loss`, `args`,
  `avg_grad_1`, ... bound as the script binds them. (Its `beta1 > 0` branch is another
  momentum form, the step size from the EMA's norm, which we do not ship.)
* NGN-M (Islamov et al. 2025, arXiv 2508.15071, Algorithm 1): no authors' code is
  published that we could find; the rows compare with a torch transcription of the
  Algorithm, `x_{k+1} = x_k - (1 - beta) gamma_k g_k + beta (x_k - x_{k-1})`, with
  `gamma_k` step-back's NGN step size computed by `NGN` itself on a copy.
* AdaGrad-Norm with other `b0`: a torch transcription of Ward et al.'s Algorithm
  (`b^2 += ||g||^2`, then `x -= lr / b g`); optax has no AdaGrad-Norm transform.
* IAM: step-back's class `IAM` (`stepback/optim/iam.py`, only on its branch `f-iap`),
  loaded as `NGN` is; ours runs as the trainer calls it (the loss handed over with
  `set_batch_loss`, then `apply`), XLA-compiled. Skipped if the checkout has no iam.py.

Both sides train the same softmax regression in float64 (`check_parameter_free_
reference.problem`, one weight matrix, the bias folded in as a column of ones) on the
same minibatches from the same initial weights; ours runs the trainer's per-batch path
(`batch_signals` -> `set_lr` -> `optimizer.apply`, compiled) with Keras's SGD (momentum
`beta` for NGN-M). The step size of batch `t` is the one applied to it.

Run (torch in a scratch directory; step-back and aorvieto/NGN checkouts):
  git clone https://github.com/fabian-sp/step-back /tmp/step-back
  git -C /tmp/step-back checkout origin/f-iap -- stepback/optim/iam.py
  git clone https://github.com/aorvieto/NGN /tmp/NGN
  PYTHONPATH=<torch dir> python tools/check_ngn_reference.py --stepback=/tmp/step-back \
      --orvieto_ngn=/tmp/NGN [--steps=600]
Exits 1 if a row differs by more than 1e-5 (step size, relative) or 1e-5 (weights), as
check_parameter_free_reference.py: at lr 20 the float32 LR variable's rounding (6e-8 per
batch) grows to 3e-6 over 600 batches of a step size that reacts to the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from check_parameter_free_reference import BATCH, CLASSES, FEATURES, our_run, problem
from measured_page import run_and_write

from lrresearch.controllers import AdaGradNormController, NGNController

TOLERANCE = 1e-5
INTRO = (
    "`NGNController` against the authors' `NGN` (fabian-sp/step-back, "
    "`stepback/optim/ngn.py`) and against Orvieto's own `train.py` (aorvieto/NGN, its "
    "`'ngnm'` lines with `beta1 = 0`, executed as they are); NGN-M "
    "(`NGNController(momentum=beta)` with Keras's SGD(momentum=beta)) against a torch "
    "transcription of the paper's Algorithm 1 (we found no authors' code for it); "
    "`AdaGradNormController` against `train.py`'s `'adagrad'` lines (`b0^2 = 1e-2`) and a "
    "torch transcription of Ward et al.'s Algorithm for other `b0`; the optimizer `IAM` "
    "against step-back's `IAM` (`stepback/optim/iam.py`, branch `f-iap`). Same data and initial "
    "weights, float64 weights on both sides. Needs torch in a scratch directory and "
    "checkouts of both repositories."
)

# name, our controller, the reference ("stepback", "orvieto:ngnm", "orvieto:adagrad",
# "ngn_m", "ward") and its arguments; momentum is NGN-M's beta (Keras SGD's momentum).
CASES = [
    ("NGN, lr 0.1 (default)", lambda: NGNController(), "stepback", {"lr": 0.1}),
    ("NGN, lr 1", lambda: NGNController(lr=1.0), "stepback", {"lr": 1.0}),
    ("NGN, lr 20", lambda: NGNController(lr=20.0), "stepback", {"lr": 20.0}),
    ("NGN, lr 3, lb -0.5", lambda: NGNController(lr=3.0, lb=-0.5), "stepback",
     {"lr": 3.0, "lb": -0.5}),
    ("NGN, lr 2, lb -0.05", lambda: NGNController(lr=2.0, lb=-0.05), "stepback",
     {"lr": 2.0, "lb": -0.05}),
    ("NGN (Orvieto's train.py), lr 4", lambda: NGNController(lr=4.0), "orvieto:ngnm",
     {"lr": 4.0}),
    ("NGN-M, beta 0.9, lr 1", lambda: NGNController(lr=1.0, momentum=0.9), "ngn_m",
     {"lr": 1.0, "momentum": 0.9}),
    ("NGN-M, beta 0.6, lr 10, lb -0.2",
     lambda: NGNController(lr=10.0, lb=-0.2, momentum=0.6), "ngn_m",
     {"lr": 10.0, "lb": -0.2, "momentum": 0.6}),
    ("AdaGrad-Norm (Orvieto's train.py), lr 1", lambda: AdaGradNormController(lr=1.0),
     "orvieto:adagrad", {"lr": 1.0}),
    ("AdaGrad-Norm (Orvieto's train.py), lr 0.05",
     lambda: AdaGradNormController(lr=0.05), "orvieto:adagrad", {"lr": 0.05}),
    ("AdaGrad-Norm, lr 2, b0 1", lambda: AdaGradNormController(lr=2.0, b0=1.0), "ward",
     {"lr": 2.0, "b0": 1.0}),
    ("AdaGrad-Norm, lr 0.5, b0 0", lambda: AdaGradNormController(lr=0.5, b0=0.0), "ward",
     {"lr": 0.5, "b0": 0.0}),
]  # fmt: skip


def load_stepback(root: str, module: str, cls: str) -> type:
    """step-back's class `cls` from `root/stepback/optim/<module>.py`, importing only
    `stepback/types.py` besides it (the packages' `__init__`s are not run)."""
    for package in ("stepback", "stepback.optim"):
        stub = types.ModuleType(package)
        stub.__path__ = [os.path.join(root, *package.split("."))]
        sys.modules[package] = stub
    for name in ("stepback.types", f"stepback.optim.{module}"):
        path = os.path.join(root, *name.split(".")) + ".py"
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
    return getattr(sys.modules[f"stepback.optim.{module}"], cls)


def orvieto_branch(root: str, optimizer: str) -> types.CodeType:
    """The body of `elif args.optimizer == '<optimizer>':` in aorvieto/NGN's `train.py`,
    compiled as it is (dedented), up to the next branch."""
    with open(os.path.join(root, "train.py")) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.strip() == f"elif args.optimizer == '{optimizer}':")  # fmt: skip
    indent = len(lines[start]) - len(lines[start].lstrip())
    depth = [len(line) - len(line.lstrip()) for line in lines]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() and depth[i] <= indent)
    body = textwrap.dedent("\n".join(lines[start + 1 : end]))
    return compile(body, f"{root}/train.py:{start + 2}-{end}", "exec")


def reference_run(kind, kwargs, x, y, w0, refs):
    """The reference's (step sizes, weights after each batch)."""
    import torch

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    lr, lb, beta = kwargs["lr"], kwargs.get("lb", 0.0), kwargs.get("momentum", 0.0)
    ngn = refs["NGN"]  # the class
    optimizer = ngn([w], lr=lr) if kind == "stepback" else None
    namespace = {"torch": torch, "np": np, "model": model, "avg_grad_1": [None],
                 "grad_norm_squared_sum": 0, "df": [], "epoch": 0,
                 "args": argparse.Namespace(beta1=0.0, lr_decay=False, lr=lr, wd=0.0,
                                            use_wandb=False)}  # fmt: skip
    previous = w.detach().clone()
    b_sq = kwargs.get("b0", 0.0) ** 2
    etas, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        if loss.item() <= lb:  # the reference's step is then not NGN's (see NGNController)
            sys.exit(f"{kind} {kwargs}: a batch loss {loss.item():.3g} <= lb; lower lb")
        if kind == "stepback":
            optimizer.step(loss=loss.detach() - lb)  # NGN on f - lb
            eta = optimizer.state["step_size_list"][-1]
        elif kind.startswith("orvieto:"):
            namespace["loss"] = loss
            exec(refs[kind], namespace)  # the authors' lines update model.w
            eta = namespace["preconditioner"]
        elif kind == "ngn_m":  # Algorithm 1, gamma_k from step-back's NGN on a copy
            copy = torch.nn.Parameter(w.detach().clone())
            copy.grad = w.grad.detach().clone()
            probe = ngn([copy], lr=lr)
            probe.step(loss=loss.detach() - lb)
            eta = (1 - beta) * probe.state["step_size_list"][-1]
            with torch.no_grad():
                new = w - eta * w.grad + beta * (w - previous)
                previous = w.detach().clone()
                w.copy_(new)
        else:  # "ward": b^2 += ||g||^2, x -= lr / b g
            g_sq = float(torch.sum(w.grad * w.grad))
            b_sq += g_sq
            eta = lr / np.sqrt(b_sq) if b_sq > 0 else 0.0
            with torch.no_grad():
                w.add_(w.grad, alpha=-eta)
        etas.append(float(eta))
        weights.append(w.detach().numpy().copy())
    return np.array(etas), np.array(weights)


# IAM (an optimizer): name, our arguments (the cap is IAM's learning_rate, exact in
# float32), the reference's.
IAM_CASES = [
    ("IAM, defaults (lr 1, lmbda 9)", {"learning_rate": 1.0}, {"lr": 1.0}),
    ("IAM, lr 0.25, lmbda 4", {"learning_rate": 0.25, "lmbda": 4.0}, {"lr": 0.25, "lmbda": 4.0}),
    ("IAM, lr 4, lmbda 19, lb -0.1",
     {"learning_rate": 4.0, "lmbda": 19.0, "lower_bound": -0.1},
     {"lr": 4.0, "lmbda": 19.0, "lb": -0.1}),
]  # fmt: skip


def iam_reference(iam_class, kwargs, x, y, w0):
    """step-back's IAM: (tau = min(lr, eta) per batch, weights after each batch)."""
    import torch

    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = iam_class([w], **kwargs)
    taus, weights = [], []
    for xb, yb in zip(x, y, strict=True):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.tensor(xb) @ w, torch.tensor(yb))
        loss.backward()
        optimizer.step(loss=loss)
        taus.append(min(kwargs["lr"], optimizer.state["step_size_list"][-1]))
        weights.append(w.detach().numpy().copy())
    return np.array(taus), np.array(weights)


def iam_ours(kwargs, x, y, w0):
    """Our IAM, the loss handed over, one compiled (XLA) step per batch."""
    import keras
    import tensorflow as tf

    from lrresearch.optimizers import IAM

    w = tf.Variable(w0, name="w")
    optimizer = IAM(**kwargs)
    optimizer.build([w])
    # float64, as the reference's (Keras computes a loss in floatx, float32, by default)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = cross_entropy(yb, xb @ w)
        optimizer.set_batch_loss(loss)
        optimizer.apply(tape.gradient(loss, [w]), [w])
        return optimizer.effective_lr + 0.0, tf.identity(w)

    out = [step(xb, yb) for xb, yb in zip(x, y, strict=True)]
    assert step.experimental_get_tracing_count() == 1
    return np.array([float(t) for t, _ in out]), np.array([v.numpy() for _, v in out])


def iam_rows(iam_class, x, y, w0) -> bool:
    """Prints the IAM rows; True if one differs by more than TOLERANCE."""
    failed = False
    for name, ours_kwargs, ref_kwargs in IAM_CASES:
        ref_taus, ref_w = iam_reference(iam_class, ref_kwargs, x, y, w0)
        taus, weights = iam_ours(ours_kwargs, x, y, w0)
        diff = np.abs(taus - ref_taus)
        tau_diff = float(np.max(np.where(ref_taus > 0, diff / np.maximum(ref_taus, 1e-300), diff)))
        w_scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / w_scale))
        capped = int(np.sum(ref_taus == ref_kwargs["lr"]))
        print(f"| {name} | stepback IAM (XLA) | {taus.min():.4g} .. {taus.max():.4g}, "
              f"{capped} at the cap | {tau_diff:.2e} | {w_diff:.2e} |")  # fmt: skip
        failed |= not (tau_diff <= TOLERANCE and w_diff <= TOLERANCE)
    return failed


def describe(path: str, stated: str | None) -> str:
    """`path`'s sha256 (first 12 hex digits), and its repository's commit: git's when it
    is a checkout, else `stated` (`--*_commit`, the commit the file was taken from)."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    done = subprocess.run(["git", "-C", os.path.dirname(path), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode == 0:
        commit = f", commit {done.stdout.strip()[:12]}"
    else:
        commit = f", from commit {stated} (as stated)" if stated else ", commit unknown"
    return f"{path} (sha256 {digest}{commit})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--stepback", required=True, help="a checkout of fabian-sp/step-back")
    parser.add_argument("--orvieto_ngn", required=True, help="a checkout of aorvieto/NGN")
    parser.add_argument("--stepback_commit", help="the commit, if --stepback is no git checkout")
    parser.add_argument("--orvieto_commit", help="the commit, if --orvieto_ngn is no git checkout")
    parser.add_argument(
        "--iam_commit", help="the commit of iam.py (branch f-iap), if not --stepback's"
    )
    args = parser.parse_args()
    sys.modules.setdefault("triton", None)  # see check_hypergradient_reference.py
    try:
        import torch
    except ImportError as e:
        sys.exit(f"needs torch (not an lrresearch dependency): {e}")
    ngn_file = os.path.join(args.stepback, "stepback", "optim", "ngn.py")
    iam_file = os.path.join(args.stepback, "stepback", "optim", "iam.py")  # branch f-iap
    train_file = os.path.join(args.orvieto_ngn, "train.py")
    for path in (ngn_file, train_file):
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: see the checkouts in this script's docstring")
    refs = {"NGN": load_stepback(args.stepback, "ngn", "NGN")}
    if os.path.exists(iam_file):
        refs["IAM"] = load_stepback(args.stepback, "iam", "IAM")
    refs.update({f"orvieto:{b}": orvieto_branch(args.orvieto_ngn, b) for b in ("ngnm", "adagrad")})
    print(f"versions: torch {torch.__version__}, numpy {np.__version__}")
    print(f"step-back NGN: {describe(ngn_file, args.stepback_commit)}")
    print(f"aorvieto/NGN: {describe(train_file, args.orvieto_commit)}")
    iam_commit = args.iam_commit or args.stepback_commit
    iam = describe(iam_file, iam_commit) if "IAM" in refs else "not found: IAM rows skipped"
    print(f"step-back IAM: {iam}")
    print(
        f"problem: softmax regression, {FEATURES}+1 x {CLASSES} float64 weights, batch "
        f"{BATCH}, {args.steps} batches, Keras SGD (momentum beta for NGN-M)\n"
    )
    x, y, w0 = problem(args.steps, seed=7)
    print("| method, setting | reference | step size range (ours) | max rel step-size diff "
          "| max rel weight diff |")  # fmt: skip
    print("|---|---|---|---|---|")
    failed = False
    for name, make, kind, kwargs in CASES:
        ref_etas, ref_w = reference_run(kind, kwargs, x, y, w0, refs)
        etas, weights = our_run(make, x, y, w0, kwargs.get("momentum", 0.0))
        scale = np.maximum(np.abs(ref_etas), 1e-300)
        eta_diff = float(np.max(np.abs(etas - ref_etas) / scale))
        w_scale = np.max(np.abs(ref_w), axis=(1, 2))
        w_diff = float(np.max(np.max(np.abs(weights - ref_w), axis=(1, 2)) / w_scale))
        print(f"| {name} | {kind} | {etas.min():.4g} .. {etas.max():.4g} | {eta_diff:.2e} "
              f"| {w_diff:.2e} |")  # fmt: skip
        failed |= not (eta_diff <= TOLERANCE and w_diff <= TOLERANCE)
    if "IAM" in refs:
        failed |= iam_rows(refs["IAM"], x, y, w0)
    print(
        "\nweight diff: max over batches of max|w_ours - w_ref| / max|w_ref|; the LR goes "
        "through the optimizer's float32 learning-rate variable (one rounding per batch)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "NGN, NGN-M, AdaGrad-Norm and IAM against their references"
    sys.exit(run_and_write(main, "docs/parity/ngn.md", title, INTRO))
