"""Kill soak (not a CI test): SIGKILL a run again and again, resume it each time, and
check that what is left equals a run that was never interrupted.

Trains an uninterrupted reference run, then the same configuration with `--kills`
SIGKILLs at random moments (uniform in `--min_delay`..`--max_delay` seconds after each
process prints its first progress line, so they land before, after and during saves),
each followed by `lrresearch train --resume`, and a last resume to the end. Reads both
runs with TensorBoard's Python loader (`EventAccumulator`, which purges no tensor
events on a restart, so a point left twice shows up twice) and compares the per-batch
series and the final checkpoint's weights. Also runs `lrresearch compare` on both.

Run: `python tools/kill_soak.py [--steps 30000 --kills 5 --seed 0]`; `--gin_param`
(repeatable) changes the configuration, e.g. `--gin_param='Trainer.optimizer = @Prodigy'`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

TAGS = ("lr", "loss/batch", "grad/global_norm", "loss/ma_long")
EXTRA_PARAMS: list[str] = []  # --gin_param, after the defaults below


def command(logdir: str, name: str, steps: int, every: int, *extra: str) -> list[str]:
    params = [
        f"Trainer.steps = {steps}",
        f"Trainer.checkpoint_every = {every}",
        "Trainer.deterministic = True",
        "Trainer.steps_per_loop = 10",  # ~3x slower than the default: room for kills
        "Trainer.controller = @LossTrendController()",
        "LossTrendController.window = 50",
        "LossTrendController.max_lr = 0.2",
        *EXTRA_PARAMS,
    ]
    return [sys.executable, "-u", "-m", "lrresearch", "train", f"--logdir={logdir}",
            f"--run_name={name}", *(f"--gin_param={p}" for p in params), *extra]  # fmt: skip


def killed_run(
    cmd: list[str], delay: float, save_folder: str | None = None
) -> tuple[int | None, bool]:
    """Runs `cmd`, SIGKILLs it `delay` s after its first progress line (or, with
    `save_folder`, as soon as a `ckpt-N_temp` folder of a save in progress appears there
    after that); returns the last step it printed and whether it had finished first."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("step "):
            last = int(line.split()[1].split("/")[0])
            break
        if line.startswith("done:"):
            process.wait()
            return last, True
    time.sleep(delay)
    while save_folder and process.poll() is None:
        if any(f.endswith("_temp") for f in os.listdir(save_folder)):
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    return last, process.returncode == 0


def series(run_dir: str) -> dict[str, np.ndarray]:
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return {
        tag: np.array([(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)])
        for tag in TAGS
    }


def weights(run_dir: str) -> list[np.ndarray]:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{run_dir}/checkpoints"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if "_trainable_variables" in n)
    return [reader.get_tensor(n) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--checkpoint_every", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--min_delay", type=float, default=0.3)
    parser.add_argument("--max_delay", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--during_save", action="store_true", help="kill as a save is being written"
    )
    parser.add_argument("--gin_param", action="append", default=[], help="a gin binding")
    args = parser.parse_args()
    EXTRA_PARAMS.extend(args.gin_param)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as logdir:
        steps, every = args.steps, args.checkpoint_every
        subprocess.run(command(logdir, "reference", steps, every, "--quiet"), check=True)
        temp_folders = 0
        for kill in range(args.kills):
            delay = rng.uniform(args.min_delay, args.max_delay)
            extra = ("--resume",) if kill else ()
            folder = f"{logdir}/killed/checkpoints" if args.during_save else None
            _, finished = killed_run(command(logdir, "killed", steps, every, *extra), delay, folder)
            temp_folders += (
                any(f.endswith("_temp") for f in os.listdir(f"{logdir}/killed/checkpoints"))
                if os.path.isdir(f"{logdir}/killed/checkpoints")
                else 0
            )
            print(f"kill {kill + 1}: {delay:.2f} s after the first progress line"
                  + (" (the run had finished first)" if finished else ""), flush=True)  # fmt: skip
        subprocess.run(command(logdir, "killed", steps, every, "--resume", "--quiet"), check=True)
        reference, killed = series(f"{logdir}/reference"), series(f"{logdir}/killed")
        for tag in TAGS:
            points = killed[tag]
            once = sorted(points[:, 0].astype(int).tolist()) == list(range(steps))
            equal = np.array_equal(points, reference[tag])
            print(f"{tag:18} {len(points):>6} points (want {steps}); each step once: {once}; "
                  f"values equal to the uninterrupted run: {equal}")  # fmt: skip
        pairs = zip(weights(f"{logdir}/reference"), weights(f"{logdir}/killed"), strict=True)
        same = all(np.array_equal(a, b) for a, b in pairs)
        print(f"final weights bit-identical: {same}; kills that left an interrupted save "
              f"(ckpt-N_temp/): {temp_folders}")  # fmt: skip
        compared = subprocess.run(
            [sys.executable, "-m", "lrresearch", "compare", f"{logdir}/reference",
             f"{logdir}/killed", f"--out={logdir}/cmp"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print(compared.stdout.split("\nwrote ")[0])
    print(f"{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"TF {tf.__version__}; {time.strftime('%Y-%m-%d')}; command: "
          f"python tools/kill_soak.py {' '.join(sys.argv[1:])}")  # fmt: skip


if __name__ == "__main__":
    main()
