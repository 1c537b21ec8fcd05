"""`--sample` distributions for `lrresearch sweep --sweep_random`: parsing, seeded draws,
ranges, and the errors that name the flag and the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrresearch.studies import sampling, sweep
from lrresearch.studies.sampling import parse_sample, sample_values


def draws(spec: str, n: int = 2000, seed: int = 0) -> list:
    return sample_values(parse_sample(spec), seed, n)


def test_the_same_seed_draws_the_same_points_and_another_seed_others():
    spec = "LossTrendController.max_lr=loguniform(1e-3, 1)"
    assert draws(spec, 20, seed=3) == draws(spec, 20, seed=3)
    assert draws(spec, 20, seed=3) != draws(spec, 20, seed=4)


def test_a_bindings_draws_do_not_depend_on_the_other_samples():
    specs = ["A.x=uniform(0, 1)", "B.y=intuniform(1, 9)"]
    alone = sweep.parse_samples(specs[:1], 10, 5)[1][0]
    together = sweep.parse_samples(specs, 10, 5)[1][0]
    assert alone == together


def test_loguniform_lies_in_range_and_covers_every_decade_evenly():
    values = np.array(draws("X.lr=loguniform(1e-4, 1)"))
    assert values.min() >= 1e-4 and values.max() <= 1
    per_decade = np.histogram(np.log10(values), bins=[-4, -3, -2, -1, 0])[0]
    assert per_decade.min() > 0.2 * len(values)  # 25% expected in each of the 4 decades


def test_uniform_and_the_integer_kinds_lie_in_range():
    uniform = draws("X.a=uniform(-2, 3)")
    assert all(isinstance(v, float) and -2 <= v < 3 for v in uniform)
    ints = draws("X.b=intuniform(2, 5)")
    assert all(isinstance(v, int) for v in ints) and set(ints) == {2, 3, 4, 5}
    log_ints = np.array(draws("X.c=logintuniform(1, 1000)"))
    assert log_ints.min() >= 1 and log_ints.max() <= 1000
    # log-uniform: about a third per decade of [1, 1000], not 90% in the top one
    assert np.mean(log_ints < 10) > 0.25 and np.mean(log_ints >= 100) < 0.45


def test_choice_draws_every_gin_value_and_records_scalars():
    picked = draws("Trainer.batch_size=choice([32, 64, 128])", 300)
    assert set(picked) == {"32", "64", "128"}
    gin_values = draws("mlp.hidden=choice([(8,), (16, 16)])", 50)
    assert set(gin_values) == {"(8,)", "(16, 16)"}
    assert [sampling.literal(v) for v in ("64", "'adam'", "(8,)", "@A()")] == [
        64,
        "adam",
        "(8,)",
        "@A()",
    ]


def test_drawn_floats_bind_exactly_as_gin_source():
    sample = parse_sample("X.lr=loguniform(1e-3, 1)")
    for value in sample_values(sample, 0, 20):
        assert float(sample.distribution.gin(value)) == value


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("X.y=loguniform(0, 1)", "loguniform needs 0 < low, got low=0"),
        ("X.y=lognormal(0, 1)", "unknown distribution 'lognormal'; use one of uniform(...)"),
        ("X.y=uniform(1)", "uniform takes two finite numbers, uniform(low, high)"),
        ("X.y=uniform(2, 1)", "uniform needs low < high"),
        ("X.y=intuniform(0.5, 3)", "for floats use uniform(low, high)"),
        ("X.y=logintuniform(0, 3)", "use intuniform(low, high)"),
        ("X.y=choice(1, 2)", "e.g. --sample='Trainer.batch_size=choice([32, 64, 128])'"),
        ("loguniform(1e-3, 1)", "must look like 'Configurable.param=distribution(...)'"),
    ],
)
def test_a_bad_distribution_names_the_flag_and_the_fix(spec, says):
    with pytest.raises(sampling.SampleError) as raised:
        parse_sample(spec)
    assert str(raised.value).startswith(f"--sample={spec!r}: ")
    assert says in str(raised.value)


def test_sample_and_sweep_random_need_each_other():
    with pytest.raises(ValueError, match="needs --sweep_random=N"):
        sweep.parse_samples(["X.y=uniform(0, 1)"], 0, 0)
    with pytest.raises(ValueError, match="needs one or more --sample"):
        sweep.parse_samples([], 3, 0)


def test_grid_times_draws_runs_every_combination_at_the_same_drawn_points():
    samples, drawn = sweep.parse_samples(["LossTrendController.max_lr=loguniform(1e-3, 1)"], 3, 0)
    axes = [("Trainer.seed", ["0", "1"])]
    points = sweep.plan(axes, samples, drawn)
    assert [
        (p.bindings["Trainer.seed"], p.sampled["LossTrendController.max_lr"]) for p in points
    ] == [(seed, value) for value in drawn[0] for seed in ("0", "1")]
    value = drawn[0][0]
    assert points[0].run_name == f"000-seed=0-max_lr={value:.3g}"
    assert math.isclose(float(points[0].bindings["LossTrendController.max_lr"]), value)
