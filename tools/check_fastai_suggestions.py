"""Compares lrresearch's LR-finder suggestions with fastai's own functions.

fastai is not a dependency of lrresearch (it brings torch). Install it in a scratch
venv and pass its interpreter:

    python3 -m venv /tmp/fastaivenv && /tmp/fastaivenv/bin/pip install fastai
    python tools/check_fastai_suggestions.py --fastai_python /tmp/fastaivenv/bin/python

For each curve (a few synthetic ones, and one real curve from `lrresearch lr-find` on
the built-in default workload with fastai's defaults: 100 batches, lr 1e-7..10), fastai
gets what its recorder would hold (the curve up to the batch where it diverged, where
fastai's `LRFinder` stops) and the window `Learner.lr_find` suggests from
(`[num_it // 10 : -5]`, cut at the first NaN), as float32 torch tensors; fastai's
`valley`, `slide`, `steep` and `minimum` run in a subprocess with that interpreter
(torch and TensorFlow stay in separate processes). Ours: `lr_find.suggest_all` on the
whole curve. `valley` and `slide` must match to float rounding (exit 1 otherwise);
`steepest` and `min10` are lrresearch's own definitions (steepest only up to the
minimum; min/10 over the whole curve) and are printed beside fastai's `steep` and
`minimum` for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from lrresearch.config import parse as config
from lrresearch.studies import lr_find as finder

RTOL = 1e-6

FASTAI_SIDE = r"""
import json, sys
import numpy as np
import torch
import fastai
from fastai.callback.schedule import valley, slide, steep, minimum

out = {"version": fastai.__version__}
data = np.load(sys.argv[1])
for name in data.files:
    if not name.endswith("/lrs"):
        continue
    curve = name[: -len("/lrs")]
    num_it = int(data[curve + "/num_it"])
    # Learner.lr_find (fastai 2.8): recorder lists -> tensors, trimmed, cut at a NaN.
    lrs = torch.tensor(data[curve + "/lrs"].tolist())[num_it // 10 : -5]
    losses = torch.tensor(data[curve + "/losses"].tolist())[num_it // 10 : -5]
    nan_idxs = torch.nonzero(torch.isnan(losses.view(-1)))
    if len(nan_idxs) > 0:
        lrs, losses = lrs[: min(nan_idxs)], losses[: min(nan_idxs)]
    out[curve] = {
        "valley": valley(lrs, losses, num_it)[0],
        "slide": slide(lrs, losses, num_it)[0],
        "steep": steep(lrs, losses, num_it)[0],
        "minimum": minimum(lrs, losses, num_it)[0],
        "window": len(losses),
    }
print(json.dumps(out))
"""


def synthetic_curves() -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """name -> (lrs, smoothed losses, num_steps), float32 as our buffers hold them."""
    curves = {}
    rng = np.random.default_rng(0)
    for name, n, noise in (("tanh-300", 300, 0.0), ("tanh-noisy-100", 100, 0.02)):
        lrs = np.geomspace(1e-5, 10, n)
        x = np.log10(lrs)
        curve = 2.0 - np.tanh((x + 2) * 2.0) + np.where(x > 0, 5 * x**2, 0.0)
        curve += noise * rng.normal(size=n)
        curves[name] = (lrs, curve, n)
    lrs = np.geomspace(1e-6, 10, 200)
    x = np.log10(lrs)
    readme = 1.42 - 0.37 * np.clip((x + 4) / 4, 0, 1) ** 2
    readme[-8:] = np.geomspace(5.0, 4.1e5, 8)
    curves["readme-shape-200"] = (lrs, readme, 200)
    lin = np.linspace(1e-4, 1.0, 150)
    curves["linear-ramp-150"] = (
        lin,
        2.3 - 1.2 * np.sqrt(lin) + 8 * np.maximum(lin - 0.6, 0) ** 2,
        150,
    )
    # A noisy batch-loss series smoothed the way the controller smooths it.
    lrs = np.geomspace(1e-7, 10, 100)
    batch = 2.3 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 3) * 2)) + 0.1 * rng.normal(size=100)
    batch[-15:] += np.geomspace(0.1, 30, 15)
    ema, smoothed = 0.0, []
    for t, loss in enumerate(batch):
        ema = 0.98 * ema + 0.02 * loss
        smoothed.append(ema / (1 - 0.98 ** (t + 1)))
    curves["ema-noisy-100"] = (lrs, np.array(smoothed), 100)
    return {k: (v[0].astype(np.float32), v[1].astype(np.float32), v[2]) for k, v in curves.items()}


def real_curve(logdir: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The curve of `lrresearch lr-find --num_steps=100 --start_lr=1e-7 --end_lr=10`
    (fastai's defaults) on the built-in default workload, through the function the
    command calls."""
    config.parse([], [])
    result = finder.lr_find(1e-7, 10.0, 100, logdir=logdir, run_name="real", progress=print)
    print(f"lr-find: {result.summary()}\n")
    return result.lrs, result.smoothed_losses, 100


def recorded(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What fastai's recorder would hold: the curve up to the batch where it diverged."""
    diverged = finder.divergence_index(smoothed, 4.0)
    end = len(smoothed) if diverged is None else diverged + 1
    return lrs[:end], smoothed[:end]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fastai_python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        curves = synthetic_curves()
        curves["real: lrresearch lr-find"] = real_curve(tmp)
        arrays = {}
        for name, (lrs, smoothed, n) in curves.items():
            lrs_cut, smoothed_cut = recorded(lrs, smoothed)
            arrays.update({f"{name}/lrs": lrs_cut, f"{name}/losses": smoothed_cut})
            arrays[f"{name}/num_it"] = np.array(n)
        path = os.path.join(tmp, "curves.npz")
        np.savez(path, **arrays)
        side = os.path.join(tmp, "fastai_side.py")
        with open(side, "w") as f:
            f.write(FASTAI_SIDE)
        done = subprocess.run(
            [args.fastai_python, side, path], capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 2
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"fastai {theirs.pop('version')}; ours: lrresearch.studies.lr_find.suggest_all\n")
    head = ["curve", "points", "valley ours", "valley fastai", "slide ours", "slide fastai"]
    head += ["steepest ours", "steep fastai", "min10 ours", "minimum fastai"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    worst = 0.0
    for name, (lrs, smoothed, n) in curves.items():
        ours = finder.suggest_all(lrs, smoothed, n, 4.0)
        fa = theirs[name]
        for key in ("valley", "slide"):
            worst = max(worst, abs(ours[key] - fa[key]) / abs(fa[key]))
        cells = [name, f"{len(smoothed)} ({fa['window']} in window)"]
        cells += [f"{ours['valley']:.6g}", f"{fa['valley']:.6g}"]
        cells += [f"{ours['slide']:.6g}", f"{fa['slide']:.6g}"]
        cells += [f"{ours['steepest']:.3g}", f"{fa['steep']:.3g}"]
        cells += [f"{ours['min10']:.3g}", f"{fa['minimum']:.3g}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nlargest relative difference, valley and slide: {worst:.2g} (tolerance {RTOL:g})")
    return 0 if worst <= RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
