"""What tf.distribute costs the trainer on this machine: one device, MirroredStrategy on
logical CPUs, and MultiWorkerMirroredStrategy with local workers, interleaved.

    python tools/bench_distribute.py [--rounds 3] [--steps 2000] [-- extra lrresearch flags]

Each configuration is a fresh `lrresearch train` process (the device split and the
multi-worker runtime must be set before TensorFlow starts), so this compares processes,
not blocks in one process: every round runs all configurations back to back, and the
ratio to one device is taken within the round. Throughput is the trainer's own
"steps/s after the first call" (tracing excluded). On one CPU the replicas share the
same cores: expect a cost, not a speed-up; on several GPUs or hosts the same runs scale.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = re.compile(r"done: \d+ steps in [\d.]+ s \(([\d,]+) steps/s")


from measured_page import run_and_write  # noqa: E402

INTRO = (
    "The default `lrresearch train` under each `distribution.strategy`, each "
    "configuration a fresh process, interleaved; the trainer's steps/s after the first "
    "call. On one 2-core CPU the replicas share the cores: a correctness check, not a "
    "speed-up."
)


def configurations(cpus: int, workers: int) -> dict[str, list[str]]:
    train = [sys.executable, "-m", "lrresearch", "train", "--quiet"]
    return {
        "one device": train,
        f"mirrored, {cpus} logical CPUs": [
            *train,
            "--gin_param",
            'distribution.strategy = "mirrored"',
            "--gin_param",
            f"distribution.logical_cpus = {cpus}",
        ],
        f"multi_worker, {workers} local workers": [
            sys.executable,
            os.path.join(REPO, "tools", "launch_local_workers.py"),
            "--workers",
            str(workers),
            "--",
            *train[2:],
        ],
    }


def run(command: list[str], logdir: str, extra: list[str]) -> float:
    out = subprocess.run(
        [*command, "--logdir", logdir, *extra],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        check=False,
    )
    rates = RATE.findall(out.stdout)
    if out.returncode != 0 or not rates:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(rates[0].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs for mirrored")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more train flags")
    args = parser.parse_args(argv)
    extra = ["--gin_param", f"Trainer.steps = {args.steps}"]
    extra += args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    configs = configurations(args.cpus, args.workers)
    rates: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as logdir:
        for r in range(args.rounds):
            for i, (name, command) in enumerate(configs.items()):
                rates[name].append(
                    run(command, logdir, [*extra, "--run_name", f"round{r}-config{i}"])
                )
                print(f"round {r + 1}: {name}: {rates[name][-1]:,.0f} steps/s", flush=True)
    base = rates["one device"]
    span = f"median, min..max over {args.rounds} rounds"
    print(f"\n| configuration | steps/s (median) | x one device ({span}) |")
    print("|---|---|---|")
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(
            f"| {name} | {statistics.median(values):,.0f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}..{max(ratios):.2f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_and_write(main, "docs/benchmarks/distribute.md", "tf.distribute cost", INTRO))
