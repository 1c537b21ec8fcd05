"""The byte-level transformer against gzip and xz on the same held-out bytes; written to
`docs/results-transformer-vs-compressors.md`.

1. The compressor floor: `gzip -9`, `bzip2 -9` and `xz -9e` (Python's `gzip`, `bz2`,
   `lzma`) on the held-out split of `stdlib_bytes` (the last `eval_fraction` of the
   corpus, the bytes `eval/bits_per_byte` is measured on), given the training part:
   `8 * (len(C(train + held_out)) - len(C(train))) / len(held_out)` bits per byte; and
   alone, `8 * len(C(held_out)) / len(held_out)`.
2. The model's curve: `experiments/stdlib_transformer.gin` trained by the real CLI
   (`lrresearch train`, one TensorFlow thread per run) with Schedule-Free AdamW (no
   schedule to tie to a horizon, so every eval of one run is the result at that
   budget), at two sizes, each stopped by Ctrl-C after `--minutes` (a resumable run).
   `eval/bits_per_byte` is read back with TensorBoard's loader at every eval.
3. Where the model passes gzip: the budget where a run's curve first goes below gzip's
   bits per byte, or, when it does not within the cap, a log-log fit of bits per byte
   against batches over the last half of the evals (at least 3), extrapolated to gzip's figure; with
   the batches per second measured here, that gives the minutes needed. A curve that
   flattens towards an entropy floor bends up off a straight log-log line, so the
   extrapolated budget is a lower bound.

Run: `python tools/transformer_vs_compressors.py` (about `--minutes` + 2 minutes, two
runs side by side; `--sizes 1` trains only the larger); `--floor-only` prints the
compressor floor alone (~15 s).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_FILE = "experiments/stdlib_transformer.gin"  # shipped: found by name
PAGE = "docs/results-transformer-vs-compressors.md"

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip -9": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bzip2 -9": lambda b: bz2.compress(b, compresslevel=9),
    "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def split(eval_fraction: float = 0.1) -> tuple[bytes, bytes]:
    """`(train, held_out)` bytes, split exactly as `stdlib_bytes` splits the corpus."""
    from lrresearch.workloads.stdlib_lm import stdlib_corpus

    corpus = stdlib_corpus()
    cut = int(len(corpus) * (1.0 - eval_fraction))
    return corpus[:cut], corpus[cut:]


def compressor_bits(train: bytes, held_out: bytes) -> dict[str, tuple[float, float]]:
    """Per compressor: (bits per held-out byte given `train`, bits per byte alone)."""
    out = {}
    for name, compress in COMPRESSORS.items():
        given = 8 * (len(compress(train + held_out)) - len(compress(train))) / len(held_out)
        out[name] = (given, 8 * len(compress(held_out)) / len(held_out))
    return out


def compressor_note() -> str:
    """A paragraph for `docs/results-workloads.md`: the floor, and a link to this page."""
    bits = compressor_bits(*split())
    figures = ", ".join(f"{name} {given:.2f}" for name, (given, _) in bits.items())
    return (
        "\nThe compressors on the same held-out bytes, given the training part, in bits "
        f"per byte: {figures} (`tools/transformer_vs_compressors.py`). Where the model "
        "passes gzip: [the byte transformer against compressors]"
        "(results-transformer-vs-compressors.md)."
    )


class Size(NamedTuple):
    """A model size (`byte_transformer`'s bindings) and its Schedule-Free LR."""

    layers: int
    width: int
    heads: int
    lr: float
    eval_every: int  # batches

    @property
    def params(self) -> tuple[str, ...]:
        return (
            "Trainer.optimizer = @ScheduleFreeAdamW",
            "ScheduleFreeAdamW.warmup_steps = 200",
            "Trainer.controller = @ConstantController()",
            f"ConstantController.lr = {self.lr}",
            f"byte_transformer.layers = {self.layers}",
            f"byte_transformer.width = {self.width}",
            f"byte_transformer.heads = {self.heads}",
        )

    @property
    def label(self) -> str:
        from lrresearch.workloads.stdlib_lm import byte_transformer

        count = byte_transformer((128,), self.layers, self.width, self.heads).count_params()
        return (
            f"{self.layers} blocks, width {self.width}, {self.heads} heads "
            f"({count / 1e6:.2f} M parameters), lr {self.lr:g}"
        )


# The experiment file's size (tuned at 400 batches: lr 3e-3), and a 7x larger one.
SIZES = (Size(2, 128, 4, 3e-3, 100), Size(4, 256, 8, 1e-3, 50))


def start_run(size: Size, logdir: str, name: str, steps: int):
    """Starts `lrresearch train` on the experiment file; returns the process."""
    params = (
        *size.params,
        f"Trainer.steps = {steps}",
        f"Trainer.eval_every = {size.eval_every}",
        "Trainer.steps_per_loop = 50",
        "Trainer.checkpoint_every = 1000",
        "Trainer.histogram_every = 0",
    )
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "lrresearch", "train", f"--gin_file={GIN_FILE}",
        *[f"--gin_param={p}" for p in params],
        f"--logdir={logdir}", f"--run_name={name}", "--quiet",
    ]  # fmt: skip
    with open(os.path.join(logdir, f"{name}.log"), "w") as log:  # the child keeps it open
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def stop(process: subprocess.Popen, deadline: float) -> int:
    """Waits until `deadline` (time.monotonic), then Ctrl-C; returns the exit code."""
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
    return process.returncode


def curve(run_dir: str) -> tuple[np.ndarray, np.ndarray, float]:
    """`(batches, eval/bits_per_byte, batches per second)` read back with TensorBoard's
    loader; batches are counted as trained (eval at step `s` follows `s + 1` batches)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    events = acc.Tensors("eval/bits_per_byte")
    steps = np.array([e.step + 1 for e in events], np.float64)
    bits = np.array([float(tf.make_ndarray(e.tensor_proto)) for e in events])
    batches = acc.Tensors("loss/batch")
    seconds = batches[-1].wall_time - batches[0].wall_time if batches else 0.0
    return steps, bits, (len(batches) - 1) / seconds if seconds else 0.0


def crossing(steps: np.ndarray, bits: np.ndarray, target: float) -> tuple[float, str]:
    """Batches at which the curve reaches `target` bits per byte: measured (the first
    eval at or below it) or extrapolated by a log-log fit over the last half of the
    evals; returns (batches, how it was found)."""
    below = np.flatnonzero(bits <= target)
    if below.size:
        return float(steps[below[0]]), "measured"
    if len(steps) < 3:
        return float("inf"), f"{len(steps)} evals within the cap, too few to fit a line"
    tail = slice(min(len(steps) // 2, len(steps) - 3), None)  # the last half, >= 3 evals
    slope, intercept = np.polyfit(np.log(steps[tail]), np.log(bits[tail]), 1)
    if slope >= 0:
        return float("inf"), f"no decrease over the last half (slope {slope:.3f})"
    needed = np.exp((np.log(target) - intercept) / slope)
    fit = f"bits/byte ~ {np.exp(intercept):.2f} x batches^{slope:.3f}"
    return float(needed), f"a fit over its last {len(steps[tail])} evals, {fit},"


def floor_section(bits: dict[str, tuple[float, float]], held_out: int, train: int) -> list[str]:
    return [
        "## The compressor floor\n",
        f"The held-out split of `stdlib_bytes` (the last 10% of the corpus, {held_out:,} "
        f"bytes; the model's eval windows cover all but its last <128 bytes), after the "
        f"{train:,} training bytes. Given the training part = "
        "`8 * (len(C(train + held_out)) - len(C(train))) / len(held_out)`.\n",
        "| compressor | bits/byte given the training part | bits/byte alone |",
        "|---|---:|---:|",
        *[f"| {name} | {g:.3f} | {a:.3f} |" for name, (g, a) in bits.items()],
    ]


def model_section(rows: list[tuple[Size, np.ndarray, np.ndarray, float, int]],
                  gzip_bits: float, minutes: float) -> list[str]:  # fmt: skip
    lines = [
        "\n## The model's curve\n",
        "`experiments/stdlib_transformer.gin` (batches of 32 windows of 128 bytes) "
        "with Schedule-Free AdamW (200 warmup batches, then constant; eval with its "
        f"averaged weights), one TensorFlow thread per run, {len(rows)} run(s) side by side "
        f"under `nice`, each stopped by Ctrl-C after {minutes:g} minutes (or at its "
        "`--steps`). `eval/bits_per_byte` "
        "at each eval (all ~760 held-out windows). Load average over the last 15 minutes "
        f"of the runs: {os.getloadavg()[2]:.1f} on {os.cpu_count()} cores (other jobs "
        "shared them: the rates below are lower than on an idle machine, where the "
        "[results page](results-workloads.md) trains the first size's 400 batches in "
        "about a minute).\n",
    ]
    for size, steps, bits, rate, code in rows:
        lines.append(
            f"**{size.label}**, eval every {size.eval_every} batches: {rate:.2f} batches/s, "
            f"exit code {code}.\n"
        )
        if not len(steps):
            lines.append("No eval within the cap.\n")
            continue
        lines.append("| batches | " + " | ".join(f"{s:,.0f}" for s in steps) + " |")
        lines.append("|---|" + "---:|" * len(steps))
        lines.append("| bits/byte | " + " | ".join(f"{b:.3f}" for b in bits) + " |\n")
    lines.append(f"## When does the model pass gzip -9 ({gzip_bits:.3f} bits/byte)?\n")
    for size, steps, bits, rate, _ in rows:
        needed, how = crossing(steps, bits, gzip_bits)
        if how == "measured":
            lines.append(f"- {size.label}: passes gzip at {needed:,.0f} batches (measured).")
        elif np.isfinite(needed):
            lines.append(
                f"- {size.label}: best {bits.min():.3f} after {steps.max():,.0f} batches; "
                f"{how} reaches {gzip_bits:.3f} at ~{needed:,.0f} batches, "
                f"~{needed / rate / 60:,.0f} minutes at {rate:.2f} batches/s (a lower "
                "bound: the curve flattens)."
            )
        else:
            lines.append(f"- {size.label}: {how}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-clock cap per run")
    parser.add_argument("--steps", type=int, default=40000, help="most batches per run")
    parser.add_argument("--floor-only", action="store_true", help="the compressors alone")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(range(len(SIZES))),
        help="which sizes to train, by index (0: the experiment file's, 1: the 7x larger)",
    )  # fmt: skip
    args = parser.parse_args()
    start = time.perf_counter()
    train, held_out = split()
    bits = compressor_bits(train, held_out)
    lines = floor_section(bits, len(held_out), len(train))
    print("\n".join(lines), flush=True)
    if args.floor_only:
        return
    rows = []
    sizes = [SIZES[i] for i in args.sizes]
    with tempfile.TemporaryDirectory() as logdir:
        deadline = time.monotonic() + 60 * args.minutes
        processes = [
            start_run(size, logdir, f"size{i}", args.steps) for i, size in enumerate(sizes)
        ]
        try:
            codes = [stop(process, deadline) for process in processes]
        finally:
            for process in processes:  # none outlives this script, whatever happened
                if process.poll() is None:
                    process.kill()
        for i, (size, code) in enumerate(zip(sizes, codes, strict=True)):
            if code not in (0, 130):
                log = pathlib.Path(logdir, f"size{i}.log").read_text()
                raise SystemExit(f"{size.label}: exit code {code}\n{log[-3000:]}")
            steps, curve_bits, rate = curve(os.path.join(logdir, f"size{i}"))
            rows.append((size, steps, curve_bits, rate, code))
    model_lines = model_section(rows, bits["gzip -9"][0], args.minutes)
    print("\n".join(model_lines), flush=True)
    lines += model_lines
    sys.path.insert(0, str(ROOT / "tools"))
    from measured_page import write_page

    path = write_page(
        PAGE,
        "The byte transformer against compressors",
        "\n".join(lines),
        time.perf_counter() - start,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
