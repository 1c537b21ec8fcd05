"""`WSDController` against a transcription of Hugging Face transformers'
`_get_wsd_scheduler_lambda` (`src/transformers/optimization.py`) in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lrresearch.controllers import WSDController
from lrresearch.controllers.signals import make_signals


def transformers_wsd(step, warmup, stable, decay, warmup_type, decay_type, floor, cycles):
    """The LR multiplier of transformers' WSD schedule at `step`."""
    if step < warmup:
        progress = float(step) / float(max(1, warmup))
        if warmup_type == "linear":
            factor = progress
        elif warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:  # "1-sqrt"
            factor = 1.0 - math.sqrt(1.0 - progress)
        return max(0.0, factor * (1.0 - floor) + floor)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = float(step - warmup - stable) / float(max(1, decay))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress))
        else:  # "1-sqrt"
            factor = 1.0 - math.sqrt(progress)
        return max(0.0, factor * (1.0 - floor) + floor)
    return floor


SHAPES = ("linear", "cosine", "1-sqrt")


@pytest.mark.parametrize(("warmup_type", "decay_type"), itertools.product(SHAPES, SHAPES))
def test_matches_transformers_wsd(warmup_type, decay_type):
    for warmup, stable, decay, floor, cycles in [(7, 20, 13, 0.0, 0.5), (0, 5, 9, 0.1, 1.5)]:
        controller = WSDController(0.3, warmup, stable, decay, warmup_type, decay_type,
                                   floor, cycles)  # fmt: skip
        steps = range(warmup + stable + decay + 5)
        got = [float(controller.compute(make_signals(t, 1.0)).lr) for t in steps]
        want = [0.3 * transformers_wsd(t, warmup, stable, decay, warmup_type, decay_type,
                                       floor, cycles) for t in steps]  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        assert controller.initial_lr == pytest.approx(want[0])


def test_warns_when_the_cooldown_starts_after_the_run():
    assert WSDController(warmup_steps=100, stable_steps=900).run_warnings(1000)
    assert not WSDController(warmup_steps=100, stable_steps=500).run_warnings(1000)
    (cut,) = WSDController(warmup_steps=100, stable_steps=800).run_warnings(1000)
    assert "is cut by Trainer.steps = 1000" in cut  # the cooldown ends at 1300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"decay_shape": "exp"}, "decay_shape"), ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
     ({"decay_steps": 0}, "decay_steps")],
)  # fmt: skip
def test_bad_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WSDController(**kwargs)
