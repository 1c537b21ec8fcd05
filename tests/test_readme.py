"""The README as a user runs it: the sample output of "A run" is what its command prints
today, line by line, speeds and times aside (the run is seeded, its other numbers are
checked to 5%); the experiment it shows is the shipped file of that name."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from lrresearch.config import files
from tests.support import REPO

README = (REPO / "README.md").read_text()
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
# What changes from run to run: speeds, times, the run directory's time stamp.
TIMING = re.compile(r"[\d,]+(?= steps/s)|(?<=ETA )\d+|(?<= in )[\d.]+(?= s)|"
                    r"(?<=after a )[\d.]+|-\d{8}-\d{6}")  # fmt: skip


def shape(line: str) -> str:
    """The line with every number replaced by N: what a run prints the same way."""
    return NUMBER.sub("N", TIMING.sub("T", line.rstrip()))


def numbers(line: str) -> list[float]:
    """The line's numbers that do not depend on the machine's speed (a seeded run)."""
    return [float(n.replace(",", "")) for n in NUMBER.findall(TIMING.sub("T", line))]


def sample_run() -> tuple[list[str], list[str]]:
    """The command of the README's "A run" block (after `$ `) and the lines shown."""
    block = re.search(r"## A run\n\n```text\n(.*?)```", README, re.S).group(1)
    command, *lines = block.rstrip("\n").splitlines()
    assert command.startswith("$ lrresearch train "), command
    return shlex.split(command[2:])[1:], lines


@pytest.mark.slow
@pytest.mark.subprocess
def test_sample_output_has_the_shape_of_a_real_run_and_plausible_numbers(tmp_path):
    args, shown = sample_run()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "lrresearch", *args, f"--logdir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.replace(str(tmp_path), "runs").rstrip("\n").splitlines()
    head, tail = shown[: shown.index("...")], shown[shown.index("...") + 1 :]
    fix = "re-run the README's command and paste its output into the README"
    assert [shape(x) for x in head] == [shape(x) for x in printed[: len(head)]], fix
    assert [shape(x) for x in tail] == [shape(x) for x in printed[-len(tail) :]], fix

    # The run is seeded: losses, LRs and accuracies are the same up to float rounding
    # across machines; 5% leaves room for that and catches a stale sample.
    for mine, real in zip(head + tail, printed[: len(head)] + printed[-len(tail) :], strict=True):
        assert numbers(mine) == pytest.approx(numbers(real), rel=0.05, abs=1e-3), (mine, fix)


def test_the_experiment_shown_is_the_file():
    name = re.search(r"this one is\s+`(experiments/[\w.]+)`", README).group(1)
    block = re.search(r"## An experiment\n.*?```gin\n(.*?)```", README, re.S).group(1)
    assert block == (files.SHIPPED / name).read_text(), f"copy {name} into the README"
