"""The worked study of docs/guide/worked-study.md, run through the CLI as a user would:
"does my rule beat a tuned warmup-cosine and Prodigy on MNIST-1D over 3 seeds, and how
sensitive is each to its LR?"

Every step is an `lrresearch ...` command run as a subprocess from the study folder
(default `runs/worked-study-<YYYYmmdd-HHMMSS>`, never overwritten), printed first:

1. the user's rule: `my_rules.py` from docs/guide/own-controller.md and a gin file
   binding it (`mine.gin`), copied into the study folder;
2. `lrresearch sweep --method ...`: each method's LR over a grid, over seeds (Prodigy
   over seeds only), then `lrresearch compare --sensitivity`;
3. `lrresearch tune` (TPE, `Trainer.seed = 0`) of each tunable method's LR;
4. `lrresearch sweep --method ...` at the tuned LRs over 3 other seeds, then
   `lrresearch compare`.

Then it writes the result page (default docs/results-worked-study.md, its plots under
docs/worked-study/) from the tables and PNGs `compare` and `tune` wrote
(tools/worked_study_page.py).

Run: `python tools/worked_study.py` (about 20 minutes on 2 CPU cores);
`--quick --page=/tmp/page.md` runs the same steps at a tiny budget into a temp folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worked_study_page import Step, commit, write_page

REPO = Path(__file__).resolve().parent.parent
OWN_CONTROLLER_PAGE = REPO / "docs/guide/own-controller.md"
WORKLOAD = "experiments/mnist1d_mlp.gin"
METRIC = "eval/accuracy"
# The user's gin file for their rule (my_rules.py is the guide's, unchanged). Adam, as
# the workload's other methods: target_norm ~ the median gradient norm of this MLP early on.
MINE_GIN = """\
# My rule (docs/guide/own-controller.md) on the MNIST-1D MLP's Adam.
import my_rules

Trainer.controller = @NormEMAController()
NormEMAController.target_norm = 1.0
NormEMAController.decay = 0.9
"""
LR_BINDING = {"mine": "NormEMAController.base_lr", "cosine": "WarmupCosineController.base_lr"}
SOURCE = {"mine": "mine.gin", "cosine": "strategies/warmup_cosine.gin"}
PRODIGY = "strategies/prodigy.gin"  # parameter-free: its LR multiplier stays at 1


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much the study trains: batches per run, eval cadence (batches), the LR grid
    of the sensitivity sweep, its seeds, tune trials per method, tune workers, and the
    seeds of the final comparison (not the tuning seed 0)."""

    steps: int
    eval_every: int
    grid: tuple[float, ...]
    sensitivity_seeds: tuple[int, ...]
    trials: int
    workers: int
    final_seeds: tuple[int, ...]
    warmup: int  # WarmupCosineController.warmup_steps (the shipped file's 100 at full size)


SIZING = (
    "sized from `--medium` runs on this 2-core machine (2026-12-07): 38 runs of 800 "
    "batches took 182 s of training commands (4.8 s a run) at a load average of about "
    "1.2, and 317 s (8.4 s a run) at about 4, with other jobs running; a lone 1,000-batch "
    "run trains at ~600 batches/s after a 1.4 s first (tracing) call. So a run costs "
    "~3.5 s + batches / 600 s; the full budget, 33 + 2 x 10 + 9 = 62 runs of 2,000 "
    "batches, ~6.8 s a run, is ~7 min of training on a quiet machine plus ~1 min for the "
    "6 commands' start-up and the compares, and ~14 min at a load of 4: under 20 min"
)
FULL = Budget(2000, 250, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), (0, 1, 2), 10, 2, (1, 2, 3), 100)
MEDIUM = Budget(800, 200, (1e-3, 1e-2, 1e-1), (0, 1, 2), 4, 2, (1, 2, 3), 100)
QUICK = Budget(16, 8, (3e-3, 3e-2), (0, 1), 1, 1, (1, 2), 4)


def values(xs: tuple[float, ...] | tuple[int, ...]) -> str:
    return "[" + ", ".join(f"{x:g}" for x in xs) + "]"


def common(budget: Budget) -> list[str]:
    """The flags every training command shares: the workload and the budget."""
    return [
        f"--gin_file={WORKLOAD}",
        f"--gin_param=Trainer.steps = {budget.steps}",
        f"--gin_param=Trainer.eval_every = {budget.eval_every}",
    ]


def cosine_source(budget: Budget, lr: float | str | None = None) -> str:
    """The warmup-cosine method: the shipped file, its warmup fitted to the budget."""
    parts = [SOURCE["cosine"]]
    if budget.warmup != FULL.warmup:
        parts.append(f"WarmupCosineController.warmup_steps = {budget.warmup}")
    if lr is not None:
        parts.append(f"{LR_BINDING['cosine']} = {number(lr)}")
    return "; ".join(parts)


def sensitivity_sweep(budget: Budget) -> list[str]:
    return [
        "sweep",
        *common(budget),
        "--method=mine=mine.gin",
        f"--method=cosine={cosine_source(budget)}",
        f"--method=prodigy={PRODIGY}",
        f"--sweep=mine:{LR_BINDING['mine']}={values(budget.grid)}",
        f"--sweep=cosine:{LR_BINDING['cosine']}={values(budget.grid)}",
        f"--sweep=Trainer.seed={values(budget.sensitivity_seeds)}",
        "--sweep_name=sensitivity",
        "--quiet",
    ]


def tune(budget: Budget, method: str) -> list[str]:
    lo, hi = min(budget.grid), max(budget.grid)
    files = [SOURCE[method]]
    params = ["--gin_param=Trainer.seed = 0"]
    if method == "cosine" and budget.warmup != FULL.warmup:
        params.append(f"--gin_param=WarmupCosineController.warmup_steps = {budget.warmup}")
    return [
        "tune",
        *common(budget),
        *(f"--gin_file={f}" for f in files),
        *params,
        f"--search={LR_BINDING[method]}=loguniform({lo:g}, {hi:g})",
        f"--trials={budget.trials}",
        "--sampler=tpe",
        "--seed=0",
        f"--metric={METRIC}",
        f"--workers={budget.workers}",
        f"--study_name=tune-{method}",
        "--quiet",
    ]


def number(x: float | str) -> str:
    """A value as the commands show it: `0.003` (a str, e.g. a guide's `<mine_lr>`, as is)."""
    return x if isinstance(x, str) else f"{x:g}"


def final_sweep(budget: Budget, best: dict[str, float | str]) -> list[str]:
    """The three methods at their tuned LRs (`best`: method -> LR) over the final seeds."""
    mine = f"mine.gin; {LR_BINDING['mine']} = {number(best['mine'])}"
    return [
        "sweep",
        *common(budget),
        f"--method=mine={mine}",
        f"--method=cosine={cosine_source(budget, best['cosine'])}",
        f"--method=prodigy={PRODIGY}",
        f"--sweep=Trainer.seed={values(budget.final_seeds)}",
        "--sweep_name=final",
        "--quiet",
    ]


def compare(sweep: str, out: str, sensitivity: bool) -> list[str]:
    flags = ["--sensitivity"] if sensitivity else []
    return ["compare", f"runs/{sweep}", f"--out={out}", *flags, f"--metric={METRIC}"]


def best_lr(study_dir: Path, binding: str) -> float:
    """The searched value of the best COMPLETE trial: the first such row of tune.md,
    which lists the trials best first (what a user reads off the table)."""
    lines = (study_dir / "tune.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| trial |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    for line in lines[lines.index(header) + 2 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(names) and cells[names.index("state")] == "COMPLETE":
            return float(cells[names.index(binding)])
    raise SystemExit(f"{study_dir}/tune.md has no COMPLETE trial: every trial failed")


def run(argv: list[str], cwd: Path, steps: list[Step], in_process: bool = False) -> None:
    """Runs `lrresearch ARGV` in `cwd`, printed first, timed into `steps`: as a
    subprocess, or with `in_process` through the CLI's entry point in this process (the
    same argument list and code; no TensorFlow start-up per command: for the test).
    On Ctrl-C the command (in the same process group) stops at its own checkpoint, and
    this waits for it, then says how to continue."""
    shown = "lrresearch " + shlex.join(argv)
    print(f"\n$ {shown}", flush=True)
    start = time.monotonic()
    if in_process:
        code = run_here(argv, cwd)
    else:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        process = subprocess.Popen([sys.executable, "-m", "lrresearch", *argv], cwd=cwd, env=env)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            code = process.wait()  # never killed: it saves its checkpoint and exits 130
    steps.append(Step(shown, time.monotonic() - start))
    if code == 130:
        print(
            f"worked study: Ctrl-C stopped `{shown}`; what it finished is kept in {cwd}. "
            f"Continue there with `{resume(argv)}`, then the later commands of "
            "docs/guide/worked-study.md (this script never reuses a study folder).",
            file=sys.stderr,
        )
        sys.exit(130)
    if code:
        raise SystemExit(f"worked study: `{shown}` exited {code} in {cwd}; see its output above")


def resume(argv: list[str]) -> str:
    """The command that continues `lrresearch ARGV` after a stop."""
    name = {"sweep": "--sweep_name", "tune": "--study_name"}.get(argv[0])
    for flag in argv:
        if name and flag.startswith(name + "="):
            return f"lrresearch {argv[0]} --resume {flag}"
    return "lrresearch " + shlex.join(argv)  # compare: run it again


def run_here(argv: list[str], cwd: Path) -> int:
    """`lrresearch ARGV` in this process from `cwd` (on `sys.path`, as `python -m` puts
    the working directory, for the user's `import my_rules`); its exit code."""
    import gin

    from lrresearch.cli import commands

    before = os.getcwd()
    os.chdir(cwd)
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    try:
        return commands.main(argv)
    finally:
        gin.clear_config()
        os.chdir(before)


def user_files(folder: Path) -> None:
    """The user's rule as they would have it: my_rules.py from the own-controller guide
    (its `<!-- file: my_project/my_rules.py -->` block) and mine.gin."""
    page = OWN_CONTROLLER_PAGE.read_text()
    found = re.search(r"<!-- file: my_project/my_rules.py -->\n```python\n(.*?)```", page, re.S)
    if not found:
        raise SystemExit(f"{OWN_CONTROLLER_PAGE} no longer has a my_rules.py block")
    (folder / "my_rules.py").write_text(found.group(1))
    (folder / "mine.gin").write_text(MINE_GIN)


def study(
    folder: Path, budget: Budget, in_process: bool = False
) -> tuple[list[Step], dict[str, float]]:
    """Runs every step in `folder`; returns the steps (command, wall time) and the tuned LRs."""
    steps: list[Step] = []

    def step(argv: list[str]) -> None:
        run(argv, folder, steps, in_process)

    user_files(folder)
    step(sensitivity_sweep(budget))
    step(compare("sensitivity", "sensitivity-compare", True))
    best = {}
    for method in ("mine", "cosine"):
        step(tune(budget, method))
        best[method] = best_lr(folder / "runs" / f"tune-{method}", LR_BINDING[method])
    step(final_sweep(budget, best))
    step(compare("final", "final-compare", False))
    return steps, best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        help="the study folder (default: runs/worked-study-<date>; "
        "with --quick a new temp folder); never overwritten",
    )
    p.add_argument(
        "--page",
        default=str(REPO / "docs/results-worked-study.md"),
        help="the result page; its plots go to worked-study/ next to it",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a tiny budget, for the test")
    size.add_argument("--medium", action="store_true", help="a medium budget, to size the full one")
    p.add_argument(
        "--in_process",
        action="store_true",
        help="run each command through the CLI's entry point in this process "
        "instead of a subprocess (same commands, no start-up each: for the test)",
    )
    p.add_argument("--note", default="", help="a line for the page's top (e.g. a medium run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = QUICK if args.quick else MEDIUM if args.medium else FULL
    if args.out:
        folder = Path(args.out).resolve()
    elif args.quick:
        folder = Path(tempfile.mkdtemp(prefix="worked-study-")) / "study"
    else:
        folder = Path("runs", time.strftime("worked-study-%Y%m%d-%H%M%S")).resolve()
    if folder.exists():
        print(
            f"worked study: --out {folder} exists; give a new folder (a study is never "
            "overwritten), or leave --out out for runs/worked-study-<date>",
            file=sys.stderr,
        )
        sys.exit(2)
    folder.mkdir(parents=True)
    print(f"study folder: {folder}", flush=True)
    load_start, start, code = os.getloadavg(), time.monotonic(), commit()
    steps, best = study(folder, budget, args.in_process)
    write_page(
        Path(args.page),
        folder,
        budget,
        steps,
        best,
        command=shlex.join(["python", "tools/worked_study.py", *(argv or sys.argv[1:])]),
        load=(load_start, os.getloadavg()),
        total=time.monotonic() - start,
        note=args.note,
        sizing="" if args.quick else SIZING,
        code=code,
    )
    print(f"\nresult page: {args.page}")


if __name__ == "__main__":
    main()
