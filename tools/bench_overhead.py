"""The per-batch overhead of every built-in controller and of the parameter-free
optimizers (`lrresearch profile`), with the state each keeps, written to
`docs/benchmarks/overhead.md`.

Last, the path users run: `lrresearch train`'s steady-state steps/s against the bare
loop (`tools/cli_rate.py`), so the figures here and what the CLI reports cannot drift
apart.

Run: `python tools/bench_overhead.py [--rounds 15]` on a quiet machine (other jobs
sharing the cores move the ratios by tens of percent).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from measured_page import run_and_write

INTRO = (
    "`lrresearch profile` on the default configuration (MLP 64-128-10 on digits, SGD, "
    "batch 64, 100 batches per call): each controller against `ConstantController` "
    "without summaries, in interleaved blocks; the trace columns come from a profiler "
    "trace of 40 batches (see the profiling guide for how to read them). The "
    "`ConstantController + <optimizer>` rows swap SGD for that optimizer "
    "(`--optimizers`; the Adam row is the anchor for the Adam-based ones); `extra state` is "
    "the memory each keeps beyond plain SGD's, in KiB and in copies of the model's trainable "
    "weights (9,610 float32 weights, 37.5 KiB; Mechanic's base here is SGD)."
)
OPTIMIZERS = (
    "keras.optimizers.Adam,MomentumSGD,Prodigy,DAdaptAdam,Mechanic,ScheduleFreeSGD,"
    "ScheduleFreeAdamW,ScheduleFreeRAdam,ScheduleFreeWrapper,MoMo,MoMoAdam,IAM,COCOB"
)

PARAMETER_FREE_CONTROLLERS = (
    "ConstantController,DoGController,DoWGController,DAdaptSGDController,NGNController,"
    "AdaGradNormController"
)
CNN_INTRO = (
    "The same on the MNIST-1D CNN (`experiments/mnist1d_cnn.gin`: batches of 100, "
    "histograms off) with plain SGD, the optimizer DoG, DoWG, D-Adapt SGD, NGN and "
    "AdaGrad-Norm are "
    "defined on (D-Adapt SGD refuses another), for the parameter-free methods only: "
    "the baseline here is SGD, the Adam row the anchor of the Adam-based optimizers, "
    "and the model has 5,285 trainable float32 weights (20.6 KiB)."
)

CLI_INTRO = (
    "The default run as users start it, `lrresearch train` (GradNorm, every batch "
    "logged, evaluations and checkpoints at their cadences), through `lrresearch.cli.commands."
    "main` in this process: its steady-state steps/s as its summary line reports it "
    "(after the first call; evaluation and checkpoint time left out), against the "
    "bare loop (`ConstantController`, no summaries), in interleaved rounds."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    from lrresearch.cli import commands as cli

    start_load = os.getloadavg()

    with tempfile.TemporaryDirectory() as logdir:
        code = cli.main(
            ["profile", f"--rounds={args.rounds}", f"--optimizers={OPTIMIZERS}",
             f"--logdir={logdir}", "--quiet"]
        )  # fmt: skip
        print(f"\n{CNN_INTRO}\n", flush=True)
        code = code or cli.main(
            ["profile", "--gin_file=experiments/mnist1d_cnn.gin",
             "--gin_param=Trainer.histogram_every = 0", "--gin_param=Trainer.optimizer = 'sgd'",
             f"--rounds={args.rounds}",
             "--block_batches=200", f"--controllers={PARAMETER_FREE_CONTROLLERS}",
             f"--optimizers={OPTIMIZERS}", f"--logdir={logdir}", "--quiet"]
        )  # fmt: skip
    if code:
        return code
    from cli_rate import cli_against_bare

    print(f"\n{CLI_INTRO}\n\n{cli_against_bare(rounds=max(3, args.rounds // 3))}", flush=True)
    # Other work on the cores moves the ratios by tens of percent: say how busy they were.
    end_load = os.getloadavg()
    loads = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in zip(start_load, end_load, strict=True))
    print(f"\nLoad average (1, 5, 15 min) at the start -> the end: {loads}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_and_write(main, "docs/benchmarks/overhead.md", "Per-batch overhead", INTRO))
