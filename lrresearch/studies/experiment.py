"""The HParams experiment in the root of a study folder (`sweep`, `tune`).

TensorBoard's HParams tab lists the runs below a folder whose own event file holds the
experiment: every hyperparameter with its domain and the metrics to show. A sweep and a
tune study write it in their root when they end (and again when resumed).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import tensorflow as tf

from lrresearch.logs import summaries
from lrresearch.studies import sampling
from lrresearch.training.open_run import OpenRun


def write_experiment(
    root: OpenRun,
    hparam_values: dict[str, list],
    drawn_from: dict[str, sampling.Distribution],
    metrics: Sequence[str] = (),
) -> None:
    """The HParams experiment of the runs started, in `root` (then closed): a binding
    drawn from a numeric distribution as its interval, everything else as the values
    seen (as `summaries.write_experiment_config`, which knows no intervals); the
    metrics are `summaries.HPARAM_METRICS` and `metrics` (a study's own, say)."""
    from tensorboard.plugins.hparams import api as hp

    params = []
    for name, values in hparam_values.items():
        values = list(dict.fromkeys(values))
        dist = drawn_from.get(name)
        scalars = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if dist is not None and dist.kind != "choice":
            if dist.is_int:
                domain = hp.IntInterval(int(dist.low), int(dist.high))
            else:
                domain = hp.RealInterval(float(dist.low), float(dist.high))
            params.append(hp.HParam(name, domain))
        elif values and (all(isinstance(v, str) for v in values) or len(scalars) == len(values)):
            params.append(hp.HParam(name, hp.Discrete(values)))
        else:
            params.append(hp.HParam(name))
    # TensorBoard keeps the first metadata of a tag, which holds the experiment: a
    # resumed study's experiment replaces the earlier one (the root holds no other events).
    for path in glob.glob(os.path.join(root.path, "events.out.tfevents.*")):
        os.remove(path)
    tags = list(dict.fromkeys([*summaries.HPARAM_METRICS, *metrics]))
    with root.writer.as_default():  # opened here, after the old files went
        hp.hparams_config(hparams=params, metrics=[hp.Metric(t, display_name=t) for t in tags])
        tf.summary.experimental.write_raw_pb(summaries.custom_scalars_layout(), step=0)
    root.close()
