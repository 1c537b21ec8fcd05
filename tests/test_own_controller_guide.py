"""docs/guide/own-controller.md works as written: its files are copied into a temporary
folder, its command trains through the real CLI (a few steps) from the user's project
folder, the controller's diagnostics are in the event files and the logged LR follows
the rule (numpy, from the logged gradient norms), and the page's own tests pass."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.support import REPO, read_events

pytestmark = [pytest.mark.slow]

PAGE = REPO / "docs/guide/own-controller.md"
STEPS = 30


def page_files(text: str) -> dict[str, str]:
    """`{relative path: content}` of the code blocks marked `<!-- file: PATH -->`."""
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))


def page_command(text: str) -> tuple[str, list[str]]:
    """The folder the `<!-- command -->` block `cd`s to and its `lrresearch` arguments."""
    block = re.search(r"<!-- command -->\n```\w*\n(.*?)```", text, re.S).group(1)
    (cd, folder), (name, *args) = (shlex.split(line) for line in block.strip().splitlines())
    assert (cd, name) == ("cd", "lrresearch"), block
    return folder, args


def start(argv: list[str], cwd: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(REPO)  # lrresearch itself; the user's module is found in cwd
    return subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def norm_ema(norms: np.ndarray, decay: float) -> np.ndarray:
    ema, count, out = 0.0, 0, []
    for g in norms.astype(np.float64):
        if np.isfinite(g):
            ema, count = decay * ema + (1 - decay) * g, count + 1
        out.append(ema / (1 - decay**count) if count else 0.0)
    return np.array(out)


@pytest.mark.subprocess
def test_the_page_runs_as_written(tmp_path):
    text = PAGE.read_text()
    files = page_files(text)
    assert {"my_project/my_rules.py", "my_project/my_rules.gin"} <= files.keys(), files.keys()
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    folder, args = page_command(text)
    cwd = str(tmp_path / folder)
    logdir = tmp_path / "runs"
    train = start(
        ["-m", "lrresearch", *args, f"--gin_param=Trainer.steps = {STEPS}",
         f"--logdir={logdir}", "--run_name=guide", "--quiet"],
        cwd,
    )  # fmt: skip
    page_tests = start(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_rules.py"], cwd)
    out = train.communicate(timeout=300)[0]
    assert train.returncode == 0, out
    tests_out = page_tests.communicate(timeout=300)[0]
    assert page_tests.returncode == 0 and "2 passed" in tests_out, tests_out

    run = logdir / "guide"
    assert "import my_rules" in (run / "config.gin").read_text()
    events = read_events(run)
    bindings = dict(
        re.findall(r"NormEMAController\.(\w+) = ([\d.]+)", files[f"{folder}/my_rules.gin"])
    )
    base_lr, target, decay = (float(bindings[k]) for k in ("base_lr", "target_norm", "decay"))
    ema = events.scalar("controller/norm_ema")
    scale = events.scalar("controller/scale")
    assert len(ema) == len(scale) == STEPS
    np.testing.assert_allclose(ema, norm_ema(events.scalar("grad/global_norm"), decay), rtol=1e-5)
    np.testing.assert_allclose(scale, np.where(ema > target, target / ema, 1.0), rtol=1e-5)
    np.testing.assert_allclose(events.scalar("lr"), base_lr * scale, rtol=1e-6)
    assert scale.min() < 1.0  # the rule acted: the early gradients exceed target_norm
