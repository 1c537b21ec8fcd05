"""The stacked panels `compare` draws, for single runs (`compare.plot`) and for groups
of runs (`group_plot.plot_groups`): which tags, their labels and scales, and the figure
around them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# (tag, y label, log scale, smoothed) of each panel, top to bottom; the LR panel draws
# the LR each run applied (`curves.applied_lr`).
PANELS = (
    ("lr", "learning rate (log)", True, False),
    ("loss/batch", "batch loss, smoothed (EMA 0.98)", False, True),
    ("grad/global_norm", "global gradient norm (log)", True, False),
)
Panel = tuple[str, str, bool, bool]


def figure(panels: Sequence[Panel], height: float = 3.2) -> tuple[Any, Sequence[Any]]:
    """A matplotlib figure (Agg backend, no display needed) with one axis per panel,
    sharing x; `height` in inches per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, height * len(panels)), sharex=True)
    return fig, axes


def finish(
    fig: Any, axes: Sequence[Any], panels: Sequence[Panel], x_label: str, title: str, path: str
) -> None:
    """Labels each panel (log scale where it says), the legend and title on the top one,
    writes the figure to `path` (PNG, 110 dpi) and closes it (its lines stay readable)."""
    import matplotlib.pyplot as plt

    for ax, (_, label, log, _) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(x_label)
    axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
