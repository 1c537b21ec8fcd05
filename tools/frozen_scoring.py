"""The scoring of `tools/frozen_config.py` (AlgoPerf-style), on final metrics: lower is
better everywhere (error rate = 1 - accuracy for the classifiers, bits/byte for the
transformer). Pure numpy, no TensorFlow: `tests/test_frozen_scoring.py` checks it
against hand-computed examples.

- `ratio`: a configuration's metric over the best metric of all configurations on that
  workload, both floored at the workload's resolution (one eval example's error: a
  100%-accurate run and one that misclassifies a single example differ by `1 / n`, not
  by a factor of infinity). A diverged run or a missing workload is `inf`.
- `profile`: rho(tau), the fraction of the workloads on which a configuration's ratio
  is at most tau (Dolan & More 2002; AlgoPerf's performance profiles, Dahl et al. 2023,
  arXiv 2306.07179, which score time-to-target instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TAUS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0)  # the profile's factors

Table = Mapping[str, Mapping[str, float]]  # {configuration: {workload: metric}}


def final_metric(value: float, higher_is_better: bool) -> float:
    """The scored metric of one run's final logged value: `1 - accuracy` for an
    accuracy, the value itself for a loss-like metric (bits/byte); `inf` if not finite
    (a diverged run)."""
    if not math.isfinite(value):
        return math.inf
    return 1.0 - value if higher_is_better else value


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) std over seeds; `(inf, nan)` if any seed is `inf`."""
    if any(math.isinf(v) for v in values):
        return math.inf, math.nan
    return float(np.mean(values)), float(np.std(values))


def ratios(table: Table, floors: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """`r[c][w] = max(m[c][w], f_w) / max(min_c' m[c'][w], f_w)` with `f_w = floors[w]`
    (> 0); `inf` where `c` has no finite metric on `w`. Every workload of `floors` is
    scored, including the ones a configuration lacks."""
    out: dict[str, dict[str, float]] = {c: {} for c in table}
    for w, floor in floors.items():
        finite = [m[w] for m in table.values() if w in m and math.isfinite(m[w])]
        best = max(min(finite), floor) if finite else math.nan
        for c, metrics in table.items():
            m = metrics.get(w, math.inf)
            out[c][w] = max(m, floor) / best if math.isfinite(m) else math.inf
    return out


def profile(
    table_ratios: Mapping[str, Mapping[str, float]], taus: Sequence[float] = TAUS
) -> dict[str, list[float]]:
    """rho_c(tau) = (number of workloads with r[c][w] <= tau) / (number of workloads),
    for each tau in `taus`. A small slack (1e-9 relative) makes the best one count at
    tau = 1 despite rounding."""
    out = {}
    for c, r in table_ratios.items():
        values = np.array(list(r.values()), np.float64)
        out[c] = [float(np.mean(values <= tau * (1 + 1e-9))) for tau in taus]
    return out


def gap(metric: float, baseline: float) -> float:
    """The metric minus the best tuned baseline's (positive: worse than the baseline)."""
    return metric - baseline


def plot_profiles(
    panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: str, max_tau: float = 4.0
) -> None:
    """One panel per `{title: {configuration: {workload: ratio}}}`: rho(tau) as a step
    function of tau in [1, max_tau], written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = np.linspace(1.0, max_tau, 301)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 9), squeeze=False)
    for ax, (title, table_ratios) in zip(axes[0], panels.items(), strict=True):
        for i, (c, rho) in enumerate(profile(table_ratios, taus).items()):
            style = "-" if i < 10 else "--" if i < 20 else ":"
            ax.step(taus, rho, where="post", label=c, linestyle=style)
        ax.set(
            title=title,
            xlabel="tau (metric / best metric on the workload)",
            ylabel="fraction of workloads within tau",
            ylim=(-0.02, 1.02),
            xlim=(1, max_tau),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
