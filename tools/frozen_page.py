"""The page of `tools/frozen_config.py`: `docs/results-frozen-config.md`, its per-seed
CSV and its performance-profile PNG, all from the study's results cache (every number
is a run's last logged value of the workload's tag, read back from its event files)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import frozen_methods as fm
import frozen_scoring as sc
import frozen_tuning
import numpy as np
from frozen_config import BASELINE, TUNED, Study
from measured_page import REPO

PAGE = "docs/results-frozen-config.md"


def _fmt(workload: str, value: float) -> str:
    """An error rate in %, or bits/byte."""
    if math.isinf(value):
        return "diverged"
    return f"{value:.3f}" if workload == "lm" else f"{100 * value:.2f}"


def _edge(value: float, grid: list[float]) -> str:
    """Marks a pick at the end of its grid (the best may lie beyond it)."""
    return " (grid edge)" if value in (min(grid), max(grid)) else ""


def _cell(workload: str, values: Sequence[float]) -> str:
    if not values:
        return "not run"
    mean, std = sc.mean_std(values)
    if math.isinf(mean):
        return f"diverged ({sum(math.isinf(v) for v in values)}/{len(values)} seeds)"
    n = "" if len(values) == 3 else f" (n={len(values)})"
    digits = 3 if workload == "lm" else 2
    scale = 1 if workload == "lm" else 100
    return f"{scale * mean:.{digits}f} +- {scale * std:.{digits}f}{n}"


def seed_values(study: Study) -> dict[str, dict[str, list[float]]]:
    """`{configuration: {workload: [scored metric per finished seed]}}`."""
    out: dict[str, dict[str, list[float]]] = {}
    for label, by_workload in study.configurations().items():
        out[label] = {}
        for w, bindings in by_workload.items():
            values = [study.metric(study.job(w, bindings, s)) for s in study.seeds]
            out[label][w] = [v for v in values if v is not None]
    return out


def rows(study: Study) -> list[dict]:
    """One CSV row per (role, finished run): the configurations' runs and the grids'."""
    roles: list[tuple[str, object]] = []
    for label, by_workload in study.configurations().items():
        roles += [(label, study.job(w, b, s)) for w, b in by_workload.items() for s in study.seeds]
    for m in study.methods:
        roles += [
            (f"calibration grid: {m.label}, {m.knob} {v:.3g}", j)
            for v, j in study.calibration_grid(m).items()
        ]
    for w in study.ws:
        roles += [(f"baseline grid: peak {p:g}", j) for p, j in study.baseline_grid(w).items()]
    out = []
    for role, job in roles:
        record = study.results.get(study.key(job))
        if record is None:
            continue
        w = study.ws[job.workload]
        out.append(
            {
                "workload": job.workload,
                "configuration": role,
                "seed": job.seed,
                "tag": w.tag,
                "step": record["step"],
                "value": record["value"],
                "scored": sc.final_metric(record["value"], w.higher_is_better),
                "seconds": round(record["seconds"], 1),
                "run_dir": record["run_dir"],
                "key": study.key(job),
            }
        )
    return out


def _seconds_per_run(study: Study) -> dict[str, float]:
    out = {}
    for w in study.ws:
        done = [r["seconds"] for r in study.results.values() if r["workload"] == w]
        out[w] = float(np.mean(done)) if done else math.nan
    return out


def protocol(study: Study, per_run: dict[str, float]) -> list[str]:
    lines = [
        "## Protocol\n",
        "| workload | gin file | batches | reported | floor | s per run |",
        "|---|---|---:|---|---:|---:|",
    ]
    for key, w in study.ws.items():
        shown = "error %, 1 - " if w.higher_is_better else ""
        floor = f"1/{round(1 / w.floor)}" if w.higher_is_better else "-"
        lines.append(
            f"| {w.label} (`{key}`) | `{w.gin_file}` | {w.steps:,} | "
            f"{shown}`{w.tag}` after the last batch (step {w.steps - 1}) | {floor} | "
            f"{per_run[key]:.0f} |"
        )
    lm_runs = sum(j.workload == "lm" for j in study.plan())
    lines.append("\n" + fm.lm_steps_reason(per_run["lm"], lm_runs) + "\n")
    lines.append(SCORING)
    return lines


SCORING = """Scoring (`tools/frozen_scoring.py`): per workload, each configuration's final
metric (error rate = 1 - final `eval/accuracy` for the classifiers, the final
`eval/bits_per_byte` for the transformer; lower is better), mean over seeds; the **gap**
to the best tuned baseline (AdamW + warmup-cosine at the peak tuned on that workload);
the **ratio** r = metric / best metric over all configurations on that workload, both
floored at one eval example's error (`floor`: a 100%-accurate run and one that misses one
example of 178 are 1/178 apart, not a factor of infinity); a diverged run scores r = inf.
The **performance profile** rho(tau) is the fraction of workloads with r <= tau.

AlgoPerf's real profile is over *time to reach a target* (per workload, the
wall-clock time to a validation target set by tuned baselines), which needs dedicated
hardware and targets. Here every configuration trains the same number of batches on a
2-core CPU shared by two runs at a time and, at times, other jobs, where wall-clock
times are not comparable between runs, so the profile is over the **final metric at a
fixed budget of batches**: it measures how good a frozen configuration ends, not how
fast it gets there."""


def calibration(study: Study) -> list[str]:
    head = " | ".join(f"x{f:g}" for f in fm.FACTORS)
    lines = [
        "## Published defaults, and the knob calibrated on the digits MLP\n",
        f"Each method's one knob at its published value times {list(fm.FACTORS)} on "
        "the digits MLP, seed 0 (test error %); the lowest is frozen everywhere (ties: "
        "the one nearest the published value).\n",
        f"| method | published defaults (source) | knob | {head} | frozen |",
        "|---|---|---|" + "---:|" * (len(fm.FACTORS) + 1),
    ]
    for m in study.methods:
        grid = study.calibration_grid(m)
        cells = []
        for job in grid.values():
            v = study.metric(job)
            cells.append("..." if v is None else _fmt(fm.CALIBRATION, v))
        value = study.calibrated(m)
        frozen = "..." if value is None else f"**{value:.3g}**" + _edge(value, list(grid))
        lines.append(
            f"| {m.label} | {m.source} | {m.knob} (published {m.default:g}) | "
            + " | ".join(cells)
            + f" | {frozen} |"
        )
    return lines


def _tune_command(study: Study, key: str) -> list[str]:
    """The tune's command line of one workload (its study folder under `runs/`)."""
    grid = study.baseline_peaks(key)
    root = os.path.relpath(os.path.join(study.logdir, "tune"), REPO)
    return frozen_tuning.command(study.ws[key], grid, root, key, 2)


def baseline(study: Study) -> list[str]:
    lines = [
        "\n## The baseline: AdamW + warmup-cosine\n",
        "Keras's AdamW (weight decay 0.004), 10% linear warmup from 0, cosine to 0 at "
        "the last batch. Tuned per workload by `lrresearch tune` with Optuna's grid "
        "sampler over the peaks, seed 0 (`tools/frozen_tuning.py`; each study in "
        "`runs/frozen_config/tune/<workload>`, with its `tune.md`): the peak with the "
        "lowest seed-0 metric (ties: the one nearest 3e-3), and the seed-0 scores below "
        "are the tune's trials. Frozen: the digits MLP's tuned peak, everywhere. The "
        "digits MLP's study, as run:\n",
        "```",
        frozen_tuning.shown(_tune_command(study, fm.CALIBRATION)),
        "```\n",
        "| workload | seed-0 metric per peak | tuned peak |",
        "|---|---|---:|",
    ]
    for w in study.ws:
        cells = []
        for p, job in study.baseline_grid(w).items():
            v = study.metric(job)
            cells.append(f"{p:g}: {'...' if v is None else _fmt(w, v)}")
        peak = study.tuned_peak(w)
        edge = "" if peak is None else _edge(peak, list(study.baseline_grid(w)))
        lines.append(
            f"| {w} | {', '.join(cells)} | {'...' if peak is None else f'{peak:g}'}{edge} |"
        )
    return lines


def results(study: Study, values: dict[str, dict[str, list[float]]]) -> list[str]:
    names = list(study.ws)
    lines = [
        "\n## Final metric per workload\n",
        "Error % (bits/byte for `lm`), mean +- std over seeds [0, 1, 2] (n = the "
        "seeds finished, if fewer); in brackets, the gap to the tuned baseline.\n",
        "| configuration | " + " | ".join(f"`{w}`" for w in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    base = {w: sc.mean_std(values.get(TUNED, {}).get(w, []) or [math.nan])[0] for w in names}
    for label, by_w in values.items():
        cells = []
        for w in names:
            cell = _cell(w, by_w.get(w, []))
            if by_w.get(w) and label != TUNED and math.isfinite(base[w]):
                mean = sc.mean_std(by_w[w])[0]
                if math.isfinite(mean):
                    g = sc.gap(mean, base[w])
                    cell += f" ({g:+.3f})" if w == "lm" else f" ({100 * g:+.2f})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def profile_section(study: Study, values) -> tuple[list[str], dict]:
    """The ratios and rho(tau) of every configuration that has finished every workload
    but the transformer, over the workloads all of those have; best (the mean of rho
    over the taus) first."""
    cheap = [w for w in study.ws if w != "lm"]
    scored = {c: v for c, v in values.items() if all(v.get(w) for w in cheap)}
    complete = [w for w in study.ws if all(v.get(w) for v in scored.values())]
    means = {c: {w: sc.mean_std(v[w])[0] for w in complete} for c, v in scored.items()}
    r = sc.ratios(means, {w: study.ws[w].floor for w in complete})
    prof = sc.profile(r)
    order = sorted(prof, key=lambda c: -float(np.mean(prof[c])))
    lines = [
        "\n## Ratios and the performance profile\n",
        f"Over the workloads every scored configuration has finished: {complete} (of "
        f"{list(study.ws)}). r = metric / best (of all configurations below); rho(tau) = "
        "fraction of these workloads with r <= tau; best first (by the mean of rho over "
        "the taus). Plot: `results-frozen-config.png`.\n",
        "| configuration | "
        + " | ".join(f"r `{w}`" for w in complete)
        + " | "
        + " | ".join(f"rho({t:g})" for t in sc.TAUS)
        + " |",
        "|---|" + "---:|" * (len(complete) + len(sc.TAUS)),
    ]
    for c in order:
        ratio_cells = [("inf" if math.isinf(r[c][w]) else f"{r[c][w]:.2f}") for w in complete]
        lines.append(
            f"| {c} | "
            + " | ".join(ratio_cells)
            + " | "
            + " | ".join(f"{x:.2f}" for x in prof[c])
            + " |"
        )
    left_out = [c for c in values if c not in scored]
    if left_out:
        lines.append(f"\nNot scored yet (a workload other than `lm` unfinished): {left_out}.")
    lines += summary(prof, order)
    return lines, r


def summary(prof: dict[str, list[float]], order: list[str]) -> list[str]:
    """Generated sentences: where the best frozen tuning-free configurations and the
    two baselines stand at tau = 1.1 and 1.5."""
    at = {t: sc.TAUS.index(t) for t in (1.1, 1.5)}

    def say(c: str) -> str:
        return f"{c}: rho(1.1) = {prof[c][at[1.1]]:.2f}, rho(1.5) = {prof[c][at[1.5]]:.2f}"

    free = [c for c in order if not c.startswith(BASELINE)]
    base = [c for c in order if c.startswith(BASELINE)]
    lines = ["\nIn short (generated from the table):\n"]
    lines += [
        f"- best tuning-free, {'published' if 'published' in c else 'frozen'}: {say(c)}"
        for c in (
            next((c for c in free if "published" in c), None),
            next((c for c in free if "frozen" in c), None),
        )
        if c
    ]
    lines += [f"- baseline {say(c)}" for c in base]
    return lines


def status(study: Study, absent, per_run: dict[str, float], jobs: int) -> list[str]:
    plan, missing = study.plan(), study.missing()
    lines = [
        f"\n## What ran\n\n{len(plan) - len(missing)} of the {len(plan)} runs planned "
        "so far finished (the grids, then every configuration x workload x seed)."
    ]
    total = sum(r["seconds"] for r in study.results.values())
    lines.append(
        f"The {len(study.results)} runs in the cache took {total / 3600:.1f} h of one "
        "core in total (each run's wall time in its worker, a single TensorFlow thread, "
        "niced, on cores shared with other jobs). They were trained by one or more "
        "invocations of `python tools/frozen_config.py` (each resumes from the cache); "
        "the header names the one that wrote this page."
    )
    if missing:
        left: dict[str, int] = {}
        for j in missing:
            left[j.workload] = left.get(j.workload, 0) + 1
        cost = sum(n * per_run[w] for w, n in left.items() if math.isfinite(per_run[w]))
        lines.append(
            "Not run yet: "
            + ", ".join(f"{n} on `{w}` ({per_run[w]:.0f} s each)" for w, n in left.items())
            + f"; about {cost / 60:.0f} min of one core ({cost / 60 / jobs:.0f} min with "
            f"{jobs} jobs). Re-running the command trains only these."
        )
    if absent:
        lines.append(
            "Not in this study (not in lrresearch when it ran; one line each in "
            "`frozen_methods.METHODS`): " + ", ".join(m.label for m in absent) + "."
        )
    return lines


def write(study: Study, absent, jobs: int, seconds: float, page: bool) -> None:
    per_run = _seconds_per_run(study)
    values = seed_values(study)
    intro = __import__("frozen_config").__doc__.split("\nResumable")[0].split("\n\n", 1)[1]
    logdir = os.path.relpath(study.logdir, REPO)
    lines = [
        intro.strip(),
        "",
        *protocol(study, per_run),
        "",
        *calibration(study),
        *baseline(study),
        *results(study, values),
    ]
    prof_lines, r = profile_section(study, values)
    lines += prof_lines + status(study, absent, per_run, jobs)
    lines.append(
        f"\nRuns: `{logdir}` (git-ignored); per-seed values with each run's "
        "directory, tag and step: `results-frozen-config.csv` (recompute any cell "
        "from the event files with TensorBoard's loader)."
    )
    text = "\n".join(lines)
    if not page:
        print(text)
        return
    from measured_page import write_page

    with open(os.path.join(REPO, PAGE.replace(".md", ".csv")), "w", newline="") as f:
        table = rows(study)
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    def panel(kind: str) -> dict:  # the baselines, and the methods' rows of one kind
        return {c: v for c, v in r.items() if f", {kind} (" in c or c.startswith(BASELINE)}

    published, frozen = panel("published"), panel("frozen")
    sc.plot_profiles(
        {
            "published defaults (vs. the baselines)": published,
            "calibrated on digits, frozen": frozen,
        },
        os.path.join(REPO, PAGE.replace(".md", ".png")),
    )
    path = write_page(PAGE, "One frozen configuration across workloads", text, seconds)
    print(f"wrote {path}")
