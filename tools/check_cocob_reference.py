"""Compares `COCOB` with optax's `contrib.cocob` and with the authors' own code (their
PyTorch `parameterfree` library and the paper's TensorFlow 1 release), and writes
`docs/parity/cocob.md`.

References (not lrresearch dependencies), each run in its own process by
`tools/cocob_references.py`:
  * optax 0.2.8 `optax.contrib.cocob(learning_rate, alpha, eps, weight_decay)` in a
    scratch venv with jax (`--jax_python`), with `jax_enable_x64`; the LR per batch is a
    schedule reading this run's table;
  * the authors' PyTorch `COCOB` from their library github.com/bremen79/parameterfree
    (`parameterfree/cocob.py`, `--parameterfree_repo`; torch from `--torch_path`), which
    has optax's `lr` (it multiplies the gradient) and coupled `weight_decay`;
  * the authors' TF1 `COCOB` from github.com/bremen79/cocob (`optimizer/cocob_optimizer.py`,
    `--authors_repo`: a git clone whose HEAD is read, or the file), its `_apply_dense`
    run eagerly; it has no LR and no weight decay and fixes `eps` (its initial `L`) at
    1e-8, so it runs only the rows without them (a constant LR: ignored, see the page).
    Also as they ran it, in a TF1 graph session, twice: its unordered reads and assigns
    make that run depend on the op schedule.
All three train the same softmax regression (`check_parameter_free_reference.problem`:
one weight matrix, the bias folded in as a column of ones) on the same minibatches from
the same initial weights, float64 (float32 in the rows that say so), the LR rounded to
float32 first (Keras's LR variable is float32). Ours runs `optimizer.apply` in a
`tf.function` with the LR variable assigned before every batch.

Prints, per setting, the largest relative difference over the run of the weights after
each batch (ours against optax, ours against the authors', optax against the authors'),
and of `optimizer/effective_lr` against `||w_{t+1} - w_t|| / ||g_t||` recomputed from
optax's weights and gradients.

Run:
  python tools/check_cocob_reference.py --jax_python=/tmp/numerics_optaxvenv/bin/python \
      --authors_repo=/work/.mirror/bremen79+cocob/repo --torch_path=/tmp/numerics_refpkgs \
      --parameterfree_repo=/work/.mirror/bremen79+parameterfree/repo [--steps=500]
Exits 1 if a float64 row's weights differ by more than 1e-9 (1e-4 for float32 rows), or
its effective_lr by more than 1e-6 (1e-4).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from check_parameter_free_reference import problem
from measured_page import REPO, run_and_write

from lrresearch.optimizers import COCOB

RUNNER = os.path.join(REPO, "tools", "cocob_references.py")
TOLERANCE = {False: 1e-9, True: 1e-4}  # weights: float64 rows, float32 rows
# effective_lr (logged as float32) against one recomputed from the reference's weights,
# whose float32 differences lose digits when a step is small next to the weights.
EFFECTIVE_TOLERANCE = {False: 1e-6, True: 1e-4}
INTRO = (
    "`COCOB` (COCOB-Backprop, Orabona & Tommasi 2017, Algorithm 2) against optax's "
    "`contrib.cocob` and the authors' own code: their PyTorch library `parameterfree` "
    "(`COCOB`, with an `lr` and `weight_decay`) and the paper's TensorFlow 1 release "
    "(github.com/bremen79/cocob: no LR, no weight decay, so it runs only the rows without "
    "them; `-`: not run). Same data, initial weights and LR per batch, float64 weights on "
    "all sides (float32 where the row says so).\n\n"
    "Where the references differ from each other: the TF1 release keeps the bet `tilde_w` "
    "and moves the weights by `new - tilde_w`; optax and `parameterfree` keep the initial "
    "weights `x0` and set `w = x0 + new`, reading the bet as `w - x0`. The same numbers, "
    "up to float rounding; they part only if something else moves the weights between "
    "batches. All start `L` at `eps` = 1e-8 (the paper: 0, which gives 0/0 on an all-zero "
    "first gradient) and take `max(G + L, alpha L)`. optax's `learning_rate` and "
    "`parameterfree`'s `lr` both multiply the gradient, after `weight_decay * w` is added "
    "(`parameterfree` takes the largest `lr` of its parameter groups): COCOB is invariant "
    "to the gradients' scale, so a constant LR changes the weights only through `eps` "
    "(the `lr 0.01` row matches the TF1 code, which has no LR). Ours: the TF1 release's "
    "arithmetic with that LR and decay.\n\n"
    "The TF1 code runs eagerly here (its `_create_slots` and `_apply_dense` called "
    "directly), where its ops execute in the order written. As they ran it, `minimize` in a "
    "TF1 graph, its reads and assigns of the same variables carry no control dependencies: "
    "the executor may run an assign before a read written above it, so a run's numbers "
    "depend on the op schedule (measured in the line below the table)."
)


def wavy(base: float):
    """An LR that changes every batch: `base * (1 + 0.5 sin(t / 7))`."""
    return lambda t: base * (1 + 0.5 * np.sin(t / 7))


# (name, {alpha, eps, weight_decay}, LR per batch t, float32). Not the tests' settings.
CASES = [
    ("defaults (alpha 100, eps 1e-8), lr 1", {}, lambda t: 1.0, False),
    ("alpha 20", {"alpha": 20.0}, lambda t: 1.0, False),
    ("alpha 400, eps 1e-4", {"alpha": 400.0, "eps": 1e-4}, lambda t: 1.0, False),
    ("weight decay 1e-3, alpha 50", {"weight_decay": 1e-3, "alpha": 50.0}, lambda t: 1.0,
     False),
    ("lr 0.01 (constant)", {}, lambda t: 0.01, False),
    ("LR per batch, weight decay 1e-2", {"weight_decay": 1e-2}, wavy(1.0), False),
    ("float32, alpha 50", {"alpha": 50.0}, lambda t: 1.0, True),
    ("float32, LR per batch", {}, wavy(2.0), True),
]  # fmt: skip


def authors_runs(case: tuple) -> bool:
    """Whether the authors' code can run the setting (no LR, decay or eps of its own)."""
    _, kwargs, lr_of, _ = case
    return lr_of(0) == lr_of(1) and not kwargs.get("weight_decay") and "eps" not in kwargs


def reference(which: str, python: str, cases: list, lrs: list, data: tuple, scratch: str,
              env: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Runs `cocob_references.py which` on the settings `cases` (indices into CASES)."""
    x, y, w0 = data
    spec = {"x": x, "y": y, "w0": w0}
    for i in cases:
        _, kwargs, _, float32 = CASES[i]
        spec[f"{i}/lrs"] = lrs[i].astype(np.float64)
        numbers = (
            kwargs.get(k, v) for k, v in (("alpha", 100.0), ("eps", 1e-8), ("weight_decay", 0.0))
        )
        spec[f"{i}/settings"] = np.array([*numbers, float(float32)])
    spec_path, out_path = os.path.join(scratch, "spec.npz"), os.path.join(scratch, "out.npz")
    np.savez(spec_path, **spec)
    subprocess.run([python, RUNNER, which, spec_path, out_path], env=env, check=True)
    with np.load(out_path) as loaded:
        return {k: loaded[k] for k in loaded.files}


def our_run(kwargs: dict, lrs: np.ndarray, data: tuple, dtype: type):
    """Ours; returns (weights after each batch, optimizer/effective_lr per batch)."""
    x, y, w0 = data
    w, x = tf.Variable(w0.astype(dtype), name="w"), x.astype(dtype)
    optimizer = COCOB(learning_rate=float(lrs[0]), **kwargs)
    optimizer.build([w])

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=xb @ w)
            )
        optimizer.apply(tape.gradient(loss, [w]), [w])
        return tf.identity(w), optimizer.step_summaries()["optimizer/effective_lr"]

    out = []
    for lr, xb, yb in zip(lrs, x, y, strict=True):
        optimizer.learning_rate.assign(lr)
        out.append(step(xb, yb))
    return np.array([o[0].numpy() for o in out]), np.array([float(o[1]) for o in out])


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max over batches of max|ours - theirs| / max|theirs| (per batch)."""
    ours, theirs = ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1)
    scale = np.max(np.abs(theirs), axis=1)
    return float(np.max(np.max(np.abs(ours - theirs), axis=1) / scale))


def repo_file(source: str, file: str, scratch: str) -> tuple[str, str]:
    """`file` of a git clone's (or bare mirror's) HEAD, written to `scratch`, or `source`
    itself if it is a file; and where it came from."""
    if os.path.isfile(source):
        return source, source
    git = ["git", "-C", source]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    text = subprocess.run([*git, "show", f"HEAD:{file}"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    path = os.path.join(scratch, file.replace("/", "_"))
    pathlib.Path(path).write_text(text)
    return path, f"commit {commit[:7]} (`{file}`)"


def run_references(args: argparse.Namespace, lrs: list, data: tuple) -> tuple[dict, ...]:
    """optax's, the authors' PyTorch, the authors' TF1 (eager) and two TF1 graph runs."""
    every = list(range(len(CASES)))
    with tempfile.TemporaryDirectory() as scratch:
        optax_out = reference("optax", args.jax_python, every, lrs, data, scratch)
        torch_file, torch_origin = repo_file(args.parameterfree_repo, "parameterfree/cocob.py",
                                             scratch)  # fmt: skip
        env = {**os.environ, "AUTHORS_PARAMETERFREE": torch_file, "PYTHONPATH": args.torch_path}
        torch_out = reference("parameterfree", sys.executable, every, lrs, data, scratch, env)
        source, origin = repo_file(args.authors_repo, "optimizer/cocob_optimizer.py", scratch)
        env = {**os.environ, "AUTHORS_COCOB": source}
        authors = [i for i, c in enumerate(CASES) if authors_runs(c)]
        authors_out = reference("authors", sys.executable, authors, lrs, data, scratch, env)
        graph_runs = [reference("authors_graph", sys.executable, [0], lrs, data, scratch, env)
                      for _ in range(2)]  # fmt: skip
    print(
        f"versions: {optax_out['version']}; the authors' PyTorch `parameterfree` "
        f"(github.com/bremen79/parameterfree {torch_origin}) on {torch_out['version']}; the "
        f"authors' TF1 code (github.com/bremen79/cocob {origin}) on "
        f"{authors_out['version']}; numpy {np.__version__}"
    )
    return optax_out, torch_out, authors_out, graph_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--jax_python", default="/tmp/numerics_optaxvenv/bin/python")
    parser.add_argument("--authors_repo", default="/work/.mirror/bremen79+cocob/repo")
    parser.add_argument("--parameterfree_repo",
                        default="/work/.mirror/bremen79+parameterfree/repo")  # fmt: skip
    parser.add_argument("--torch_path", default="/tmp/numerics_refpkgs")
    args = parser.parse_args()
    needed = [
        (args.jax_python, "a venv with jax and optax (pip install optax)"),
        (args.authors_repo, "fetch github.com/bremen79/cocob"),
        (args.parameterfree_repo, "fetch github.com/bremen79/parameterfree"),
        (os.path.join(args.torch_path, "torch"), "pip install --target DIR torch"),
    ]
    for path, fix in needed:
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist: {fix}, then pass its path (see --help)")
    data = problem(args.steps)
    lrs = [np.array([c[2](t) for t in range(args.steps)], np.float32) for c in CASES]
    optax_out, torch_out, authors_out, graph_runs = run_references(args, lrs, data)
    x, _, w0 = data
    print(f"problem: softmax regression, {w0.shape[0]} x {w0.shape[1]} weights, batch "
          f"{x.shape[1]}, {args.steps} batches\n")  # fmt: skip
    print("| setting | ours vs optax | ours vs authors' PyTorch | ours vs authors' TF1 | "
          "optax vs authors' TF1 | effective_lr vs optax's |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    failed = False
    for i, (name, kwargs, _, float32) in enumerate(CASES):
        ours, effective = our_run(kwargs, lrs[i], data, np.float32 if float32 else np.float64)
        theirs = optax_out[f"{i}/weights"]
        moved = np.linalg.norm(np.diff(np.concatenate([w0[None], theirs]), axis=0), axis=(1, 2))
        expected = moved / optax_out[f"{i}/grad_norms"]
        row = [relative(ours, theirs), relative(ours, torch_out[f"{i}/weights"]), None, None,
               float(np.max(np.abs(effective - expected) / expected))]  # fmt: skip
        if f"{i}/weights" in authors_out:
            authors = authors_out[f"{i}/weights"]
            row[2:4] = relative(ours, authors), relative(theirs, authors)
        failed |= max(d for d in row[:3] if d is not None) > TOLERANCE[float32]
        failed |= row[4] > EFFECTIVE_TOLERANCE[float32]
        print(f"| {name} | " + " | ".join("-" if d is None else f"{d:.2e}" for d in row) + " |")
    first, second = (run["0/weights"] for run in graph_runs)
    print(
        f"\nThe authors' code as they ran it (`minimize` in a TF1 graph session), the "
        f"defaults row twice: the two runs differ by {relative(first, second):.2e}, from "
        f"the eager run by {relative(first, authors_out['0/weights']):.2e} and "
        f"{relative(second, authors_out['0/weights']):.2e} (the eager run is the code's "
        f"sequential reading)."
    )
    print(
        "\nweights: max over batches of max|w_a - w_b| / max|w_b|; effective_lr: max relative "
        "difference of ours (float32) from ||w_{t+1} - w_t|| / ||g_t + wd w_t|| on optax's run"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    title = "COCOB against optax and the authors' code"
    sys.exit(run_and_write(main, "docs/parity/cocob.md", title, INTRO))
