"""tools/worked_study.py (the study of docs/guide/worked-study.md): `--quick` runs its
commands through the CLI into a temp folder, and the result page it writes carries
`compare`'s own numbers (checked against its CSVs and against numpy on the runs' event
files), its plots and its commands; the guide shows the script's commands."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support import REPO, read_events

sys.path.insert(0, str(REPO / "tools"))  # the script imports its page module by name
import worked_study

GUIDE = REPO / "docs/guide/worked-study.md"


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, Path, str]:
    """`(study folder, page, page text)` of one `--quick` study (commands in-process)."""
    tmp = tmp_path_factory.mktemp("worked")
    folder, page = tmp / "study", tmp / "docs" / "results.md"
    argv = [sys.executable, str(REPO / "tools/worked_study.py"), "--quick", "--in_process"]
    done = subprocess.run(
        [*argv, f"--out={folder}", f"--page={page}"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, page, page.read_text()


def table_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first markdown table whose header starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_std(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_group_table_is_compares_and_matches_numpy_on_the_event_files(quick):
    folder, _, text = quick
    page_rows = {r["group"]: r for r in table_rows(text, "| group | n |")}
    groups = read_csv(folder / "final-compare/compare_groups.csv")
    assert sorted(page_rows) == sorted(g["group"] for g in groups) == ["cosine", "mine", "prodigy"]
    for g in groups:
        mean, std = mean_std(page_rows[g["group"]]["final eval/accuracy"])
        np.testing.assert_allclose(
            [mean, std],
            [float(g["final_eval/accuracy_mean"]), float(g["final_eval/accuracy_std"])],
            rtol=1e-3,
        )
        finals = [read_events(folder / "runs/final" / run).values("eval/accuracy")[-1]
                  for run in g["runs"].split(";")]  # fmt: skip
        assert len(finals) == int(g["n"]) == len(worked_study.QUICK.final_seeds)
        np.testing.assert_allclose(
            [mean, std], [np.mean(finals), np.std(finals, ddof=1)], rtol=1e-3
        )


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_sensitivity_table_is_compares_and_the_answer_ranks_its_means(quick):
    folder, _, text = quick
    page = table_rows(text, "| strategy | LR binding |")
    rows = read_csv(folder / "sensitivity-compare/sensitivity.csv")
    assert len(page) == len(rows) == 2 * len(worked_study.QUICK.grid) + 1  # + Prodigy's band
    for shown, row in zip(page, rows, strict=True):
        assert shown["strategy"] == row["strategy"]
        assert int(shown["n"]) == int(row["n"]) == len(worked_study.QUICK.sensitivity_seeds)
        np.testing.assert_allclose(float(shown["mean"]), float(row["mean"]), rtol=1e-3)
    groups = read_csv(folder / "final-compare/compare_groups.csv")
    best = max(groups, key=lambda g: float(g["final_eval/accuracy_mean"]))
    answer = text.split("## The answer")[1].split("##")[0]
    mean = float(best["final_eval/accuracy_mean"])
    assert re.search(rf"ranks {best['group']} {mean:.3f} ±", answer)
    means = {g["group"]: float(g["final_eval/accuracy_mean"]) for g in groups}
    for other in ("cosine", "prodigy"):  # my rule against each, from compare's means
        assert f"mine - {other} = {means['mine'] - means[other]:+.3f} (" in answer


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_page_has_its_plots_tuned_lrs_and_the_commands_it_ran(quick):
    folder, page, text = quick
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(plots) == 2
    for plot in plots:
        assert (page.parent / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method, binding in worked_study.LR_BINDING.items():
        lr = worked_study.best_lr(folder / f"runs/tune-{method}", binding)
        assert f"{method} {lr:g}" in text
        assert f"{binding} = {lr:g}" in text  # the final sweep's command
    ran = re.findall(r"^\| `(lrresearch [^`]+)` \| \d+ \|$", text, re.M)
    order = ["sweep", "compare", "tune", "tune", "sweep", "compare"]
    assert [shlex.split(c)[1] for c in ran] == order
    for field in ("Machine:", "Versions: Python", "tensorflow", "keras", "optuna", "Wall time:"):
        assert field in text


def test_the_guide_shows_the_commands_the_script_runs():
    b, best = worked_study.FULL, {"mine": "<mine_lr>", "cosine": "<cosine_lr>"}
    script = [
        worked_study.sensitivity_sweep(b),
        worked_study.compare("sensitivity", "sensitivity-compare", True),
        worked_study.tune(b, "mine"),
        worked_study.tune(b, "cosine"),
        worked_study.final_sweep(b, best),
        worked_study.compare("final", "final-compare", False),
    ]
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)
    lines = re.sub(r"\\\n", " ", "".join(blocks)).splitlines()
    shown = [shlex.split(line)[1:] for line in lines if line.startswith("lrresearch ")]
    assert shown[:6] == script  # (tests/test_doc_commands.py parses every one of them)


@pytest.mark.subprocess
def test_an_existing_study_folder_is_never_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    done = subprocess.run(
        [sys.executable, str(REPO / "tools/worked_study.py"), f"--out={tmp_path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--out" in done.stderr and "exists" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_stopped_step_names_the_command_that_continues_it():
    q = worked_study.QUICK
    assert worked_study.resume(worked_study.sensitivity_sweep(q)) == (
        "lrresearch sweep --resume --sweep_name=sensitivity"
    )
    assert worked_study.resume(worked_study.tune(q, "mine")) == (
        "lrresearch tune --resume --study_name=tune-mine"
    )
    again = worked_study.compare("final", "final-compare", False)
    assert worked_study.resume(again) == "lrresearch " + shlex.join(again)
