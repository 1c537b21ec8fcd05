"""`lrresearch profile`: interleaved timing, real profiler traces, scope attribution.

Nothing here asserts on how fast anything is: the tests check the orchestration, the
files and the attribution's bookkeeping on real traces of the real trainer.
"""

from __future__ import annotations

import csv
import glob
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.analysis.profile_report import weight_copies
from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from lrresearch.config import references as gin_references
from lrresearch.controllers import LossTrendController, MaxChange, PolyakController
from lrresearch.optimizers import make_optimizer
from lrresearch.studies import profile as profiling
from lrresearch.training.trainer import Trainer
from tests.support import PROFILE_COMPOSED, PROFILE_SMALL

# `profile_run` (conftest.py, shared with tests/logs/test_tensorboard_server.py): one small
# real profile of two built-in controllers, the gin config's controller and a scoped one
# (plus the constant-LR rows), with these bindings.
SMALL, COMPOSED = PROFILE_SMALL, PROFILE_COMPOSED


@pytest.mark.slow
def test_profile_reports_every_controller_against_the_bare_baseline(profile_run):
    _, rows = profile_run
    # Gin references are labelled as written; `@config` by the reference bound to
    # Trainer.controller, so the same `@MaxChange()` named again is not timed twice.
    # Then the constant LR compiled with XLA, without and with summaries.
    assert [(r.controller, r.summaries, r.xla) for r in rows] == [
        ("ConstantController", True, False),
        ("GradNormController", True, False),
        ("DoGController", True, False),
        ("@MaxChange()", True, False),
        ("@smooth/MaxChange()", True, False),
        ("ConstantController + MomentumSGD", True, False),
        ("ConstantController", False, True),
        ("ConstantController", True, True),
    ]
    for r in rows:
        assert r.steps_per_loop == 5
        assert r.baseline_step_us == rows[0].baseline_step_us > 0
        assert r.step_us > 0
        assert 0 < r.ratio_low <= r.ratio <= r.ratio_high
        assert r.device.startswith(("CPU: ", "GPU: "))


@pytest.mark.slow
def test_profile_reports_the_state_each_row_adds(profile_run):
    _, rows = profile_run
    extra = {r.controller: r.extra_state_bytes for r in rows if not r.xla}
    config.parse([], SMALL)
    try:
        trainer = Trainer()
        trainer.build()
    finally:
        gin.clear_config()
    weights = sum(int(np.prod(v.shape)) * 4 for v in trainer.variables)  # float32
    # PyTorch momentum keeps one buffer per weight; DoG a copy of x_0 and a few scalars.
    assert extra["ConstantController + MomentumSGD"] == weights
    assert weights < extra["DoGController"] <= weights + 64
    assert extra["ConstantController"] == extra["GradNormController"] == 0
    # In copies of the weights: the same bytes over the model's trainable weights' bytes.
    assert {r.weight_bytes for r in rows} == {weights}
    copies = {r.controller: r.weight_copies for r in rows if not r.xla}
    assert copies["ConstantController + MomentumSGD"] == 1.0
    assert copies["ConstantController"] == 0.0 and 1.0 < copies["DoGController"] < 1.01
    with open(os.path.join(profile_run[0], "overhead.md")) as f:
        lines = f.read().splitlines()
    assert lines[0].endswith("| extra state, KiB | extra state, weight copies |")
    momentum = next(line for line in lines if line.startswith("| ConstantController + Mom"))
    assert momentum.endswith(f"| {weights / 1024:.1f} | 1.0x |")
    with open(os.path.join(profile_run[0], "overhead.csv")) as f:
        table = {t["controller"]: t for t in csv.DictReader(f)}
    assert float(table["ConstantController + MomentumSGD"]["weight_copies"]) == 1.0


# Hand counts of the copies of the weights each method keeps beyond plain SGD (its
# slots; the scalars add a few bytes), as docs/guide/parameter-free.md's table says.
WEIGHT_COPIES = {
    "adam": 2,  # m, v
    "Prodigy": 4,  # m, v, s, x_0
    "DAdaptAdam": 3,  # m, v, s
    "Mechanic": 1,  # x_ref (base SGD)
    "ScheduleFreeSGD": 2,  # z, the stash of y
    "ScheduleFreeAdamW": 3,  # z, the stash of y, v
    "ScheduleFreeRAdam": 3,  # z, the stash of y, v
    "ScheduleFreeWrapper": 2,  # z, the stash of y (base SGD: none)
    "COCOB": 5,  # L, G, theta, reward, bet
    "MoMo": 1,  # the momentum d
    "MoMoAdam": 2,  # d, v
    "IAM": 1,  # the anchor z
}


@pytest.mark.parametrize("name", WEIGHT_COPIES)
def test_weight_copies_match_a_hand_count(name):
    weights = [keras.Variable(np.zeros(shape, np.float32)) for shape in ((64, 128), (128,))]
    built = {}
    for key in ("sgd", name):
        optimizer = make_optimizer(profiling.make_optimizer_class(key), 0.1)
        optimizer.build(weights)
        built[key] = profiling.variable_bytes(optimizer.variables)
    copies = weight_copies(built[name] - built["sgd"], profiling.variable_bytes(weights))
    assert WEIGHT_COPIES[name] <= copies < WEIGHT_COPIES[name] + 0.01


@pytest.mark.slow
def test_profile_writes_csv_markdown_and_png(profile_run):
    out_dir, rows = profile_run
    with open(os.path.join(out_dir, "overhead.csv")) as f:
        table = list(csv.DictReader(f))
    assert [t["controller"] for t in table] == [r.controller for r in rows]
    for t, r in zip(table, rows, strict=True):
        assert float(t["ratio"]) == pytest.approx(r.ratio)
        assert float(t["controller_us"]) == pytest.approx(r.controller_us, nan_ok=True)
    with open(os.path.join(out_dir, "overhead.md")) as f:
        markdown = f.read()
    assert markdown.startswith("| controller |")
    assert all(f"| {r.controller} |" in markdown for r in rows)
    with open(os.path.join(out_dir, "overhead.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out_dir, "config.gin")) as f:
        assert "LossTrendController.max_lr = 0.5" in f.read()
    assert not os.path.exists(os.path.join(out_dir, ".timing"))


@pytest.mark.slow
def test_profile_writes_one_trace_per_variant(profile_run):
    out_dir, rows = profile_run
    xla = ["ConstantController_XLA_no_summaries", "ConstantController_XLA"]
    for name in ["baseline", *(profiling.folder_name(r.controller) for r in rows), *xla]:
        traces = glob.glob(os.path.join(out_dir, name, "plugins", "profile", "*", "*.xplane.pb"))
        assert len(traces) == 1, name
    # The summaries of the traced batches sit beside each controller's trace; the bare
    # baseline has none.
    assert glob.glob(os.path.join(out_dir, "GradNormController", "events.out.tfevents.*"))
    assert not glob.glob(os.path.join(out_dir, "baseline", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(out_dir, xla[1], "events.out.tfevents.*"))
    assert not glob.glob(os.path.join(out_dir, xla[0], "events.out.tfevents.*"))


@pytest.mark.slow
def test_profile_names_a_references_folder_without_at_parentheses_or_slash(profile_run):
    out_dir, _ = profile_run
    for folder in ("MaxChange", "smooth.MaxChange"):
        assert glob.glob(os.path.join(out_dir, folder, "plugins", "profile", "*", "*.xplane.pb"))
    with open(os.path.join(out_dir, "overhead.md")) as f:
        assert "| @smooth/MaxChange() |" in f.read()


def test_folder_names_drop_what_a_path_cannot_hold_and_never_collide():
    labels = ["baseline", "ConstantController", "@ConstantController()", "@smooth/MaxChange()"]
    assert profiling.folder_names(labels) == [
        "baseline",
        "ConstantController",
        "ConstantController-2",
        "smooth.MaxChange",
    ]


@pytest.mark.slow
def test_profile_attributes_controller_and_summary_ops(profile_run):
    _, rows = profile_run
    by_name = {r.controller: r for r in rows if not r.xla}
    # Every controller's LR passes through the guard and assign (lr_controller scope);
    # DoG does real work there (distances and sums), the constant LR almost none.
    for r in rows:
        if r.xla:  # one compiled cluster in the trace: no scopes to attribute
            assert np.isnan(r.controller_us) and np.isnan(r.summaries_us), r
            continue
        assert r.controller_us > 0, r
        assert r.summaries_us > 0, r
    assert by_name["DoGController"].controller_us > by_name["ConstantController"].controller_us


@pytest.mark.slow
def test_scope_times_split_a_real_trace(tmp_path):
    config.parse([], SMALL)
    try:
        trainer = Trainer(controller=LossTrendController(window=4, max_lr=0.5))
        trainer.build()
    finally:
        gin.clear_config()
    paths = profiling.trace(trainer, str(tmp_path), batches=8, with_summaries=True)
    assert len(paths) == 1
    times = profiling.scope_times_us(paths, batches=8)
    assert times["controller"] > 0 and times["summaries"] > 0
    # The scopes are parts of the whole step, which also runs the model and optimizer.
    assert times["all"] > times["controller"] + times["summaries"]
    # The traced batches ran and were logged at consecutive steps.
    assert int(trainer.step.numpy()) == 9


class _FakeTrainer:
    """Records the order of timed blocks; no TensorFlow involved."""

    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def run_steps(self, num_steps: int, max_per_call: int | None = None) -> tf.Tensor:
        self.log.append(self.name)
        return tf.constant(0.0)


def test_measure_interleaves_baseline_around_every_variant():
    log: list[str] = []
    variants = [
        profiling.Variant(name, _FakeTrainer(name, log), None) for name in ("base", "A", "B")
    ]
    ratios = profiling.measure(
        variants, rounds=2, calls_per_block=1, steps_per_call=4, progress=lambda message: None
    )
    assert log == ["base", "A", "base", "B", "base"] * 2
    assert set(ratios) == {"A", "B"} and all(len(r) == 2 for r in ratios.values())
    baseline_blocks = len(variants[0].block_seconds)
    assert baseline_blocks == 6


def test_bootstrap_interval_brackets_the_median():
    rng = np.random.default_rng(0)
    values = rng.normal(1.1, 0.05, size=15)
    low, high = profiling.bootstrap_median_interval(values, rng)
    assert values.min() <= low <= np.median(values) <= high <= values.max()
    assert profiling.bootstrap_median_interval([1.2] * 5, rng) == (1.2, 1.2)


def test_profile_rejects_an_unknown_controller(tmp_path, capsys):
    code = cli.main(["profile", "--controllers=GradNormControler", f"--logdir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "GradNormControler" in err and "GradNormController" in err
    assert os.listdir(tmp_path) == []  # nothing written for a bad request


def test_a_gin_reference_builds_the_controller_with_its_scoped_bindings():
    config.parse([], COMPOSED)
    try:
        plain = profiling.make_controller("@MaxChange()")
        scoped = profiling.make_controller("@smooth/MaxChange()")
        configured = profiling.make_controller(
            gin_references.expand_config("@config", profiling.FLAG)
        )
    finally:
        gin.clear_config()
    assert isinstance(plain, MaxChange) and isinstance(plain.base, PolyakController)
    assert (plain.ratio, scoped.ratio, configured.ratio) == (0.05, 0.01, 0.05)


@pytest.mark.parametrize(
    "controllers, params, expected",
    [
        ("@MaxChang()", [], ["No configurable matching", "Did you mean 'MaxChange'"]),
        ("@MaxChange()", [], ["MaxChange.controller is not set", "= @GradNormController()'"]),
        ("@mlp()", [], ["mlp is not a Controller", "lrresearch list controllers"]),
        ("@MaxChange", [], ["@Name() or @scope/Name()"]),
        ("@config", ["Trainer.controller = None"], ["binds Trainer.controller to None"]),
        ("Product", [], ["unknown controller 'Product'", "--controllers='@MaxChange()'"]),
    ],
)
def test_profile_rejects_a_reference_that_does_not_resolve_before_training(
    controllers, params, expected, tmp_path, capsys
):
    argv = ["profile", f"--controllers=GradNormController,{controllers}", f"--logdir={tmp_path}"]
    code = cli.main(argv + [f"--gin_param={p}" for p in params])
    assert code == 2
    err = capsys.readouterr().err
    assert "--controllers" in err and controllers in err
    assert all(part in err for part in expected), err
    assert len(err.strip().splitlines()) <= 4
    assert os.listdir(tmp_path) == []  # nothing written for a bad request


def test_optimizers_are_short_names_or_configurables():
    assert profiling.make_optimizer_class("adam") == "adam"  # Trainer.optimizer's own name
    assert profiling.make_optimizer_class("Prodigy").__name__ == "Prodigy"
    with pytest.raises(ValueError, match="--optimizers: unknown optimizer 'Prodigi'"):
        profiling.make_optimizer_class("Prodigi")
