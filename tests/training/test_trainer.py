"""End-to-end tests of the Trainer: runs are trained, then read back with TensorBoard's loader.

The LR of every batch is recomputed from the logged signals with independent numpy
versions of the seed rules, written from their docstrings (`lrresearch/controllers/seed.py`).
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import re
import types

import gin
import numpy as np
import pytest
import tensorflow as tf

import lrresearch.training.run_dir as rundir_module
from lrresearch.controllers import (
    ConstantController,
    Controller,
    ControllerOutput,
    LossTrendController,
)
from lrresearch.controllers.signals import make_signals
from lrresearch.training.outer_loop import NonFiniteLossError
from lrresearch.training.run_dir import RunDirExistsError
from lrresearch.training.trainer import Trainer
from lrresearch.workloads.data import digits
from lrresearch.workloads.models import mlp
from tests.support import (
    BATCH_TAGS,
    GIN_DIR,
    SEED_RUNS,
    read_events,
    small_trainer,
    snapshot,
    train,
    windowed_mean,
)

SEEDS = sorted(SEED_RUNS)
F32 = np.float32


# -- independent reference implementations of the seed rules (as documented) -------------


def grad_norm_rule(norms: np.ndarray, p: dict) -> np.ndarray:
    """lr = low_norm_lr if norm < threshold else max(min_lr, base_lr - slope * norm)."""
    n = norms.astype(F32)
    sloped = np.maximum(
        F32(p["GradNormController.min_lr"]),
        F32(p["GradNormController.base_lr"]) - F32(p["GradNormController.slope"]) * n,
    )
    return np.where(
        n < F32(p["GradNormController.low_norm_threshold"]),
        F32(p["GradNormController.low_norm_lr"]),
        sloped,
    )


def loss_trend_decisions(losses: np.ndarray, window: int) -> list[str | None]:
    """Per batch: None while the window is not full, else "rising" (newer half's mean
    strictly higher than the older rest's), "not rising", or "either" when the two means
    are too close to call in float32."""
    decisions: list[str | None] = []
    newer = window // 2
    for t in range(len(losses)):
        if t + 1 < window:
            decisions.append(None)
            continue
        w = losses[t + 1 - window : t + 1].astype(np.float64)  # current batch included
        trend = w[-newer:].mean() - w[:-newer].mean()
        if abs(trend) <= 1e-6 * max(abs(w).max(), 1e-12):
            decisions.append("either")
        else:
            decisions.append("rising" if trend > 0 else "not rising")
    return decisions


def cyclical_rule(steps: np.ndarray, losses: np.ndarray, p: dict) -> tuple[np.ndarray, ...]:
    lo, hi = p["CyclicalController.min_lr"], p["CyclicalController.max_lr"]
    cycle = p["CyclicalController.cycle_length"]
    x = (steps % cycle) / cycle
    base = lo + 0.5 * (hi - lo) * (1.0 + np.cos(np.pi * x))
    nudged = losses.astype(F32) < F32(p["CyclicalController.nudge_below_loss"])
    factor = np.where(nudged, p["CyclicalController.nudge_factor"], 1.0)
    return base * factor, base, factor, nudged


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


# -- per-batch tags ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_every_batch_tag_has_one_point_per_batch(seed_run, name):
    run = seed_run(name)
    steps = run.param("Trainer.steps")
    assert run.result.steps == steps
    for tag in (*BATCH_TAGS, "guard/lr_rejected"):
        assert tag in run.events.tags, tag
        assert run.events.plugin(tag) == "scalars", tag
        np.testing.assert_array_equal(run.events.steps(tag), np.arange(steps), err_msg=tag)
        values = run.events.values(tag)
        assert values.shape == (steps,), tag
        assert np.all(np.isfinite(values)), tag
    assert np.all(run.events.scalar("guard/lr_rejected") == 0.0)
    assert np.all(run.events.scalar("lr") > 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_tags_are_exact_without_scope_prefixes(seed_run, name):
    run = seed_run(name)
    variables = run.trainer.model.trainable_variables
    scopes = {"while", "summaries", "lr_controller", "train_step", "train_loop"}
    # The HParams and Custom Scalars plugins' own records, once per run.
    plugin_records = {
        "_hparams_/session_start_info": "hparams",
        "custom_scalars__config__": "custom_scalars",
    }
    for tag, plugin in plugin_records.items():
        assert run.events.plugin(tag) == plugin, tag
        np.testing.assert_array_equal(run.events.steps(tag), [0])
    for tag in run.events.tags - set(plugin_records):
        assert not tag.startswith("while/"), tag
        assert not set(tag.split("/")[:-1]) & scopes, tag
        assert (
            tag in BATCH_TAGS
            or tag in {"guard/lr_rejected", "guard/skipped", "config", "eval/loss", "eval/accuracy"}
            or tag.startswith(("controller/", "grad/", "weights/", "update/ratio/"))
        ), tag
        # The seed strategies leave the optimizer's momentum alone: no `optimizer/` tags.
    controller_tags = {t for t in run.events.tags if t.startswith("controller/")}
    assert controller_tags
    for tag in controller_tags:
        np.testing.assert_array_equal(
            run.events.steps(tag), np.arange(run.param("Trainer.steps")), err_msg=tag
        )
    # One `grad/`, `weights/` histogram and `grad/norm/` scalar per trainable variable,
    # named by the variable's path.
    for prefix, plugin in (
        ("grad/norm/", "scalars"),
        ("update/ratio/", "scalars"),
        ("weights/", "histograms"),
    ):
        names = {t[len(prefix) :] for t in run.events.tags if t.startswith(prefix)}
        assert len(names) == len(variables), (prefix, names)
        for v in variables:
            matches = [n for n in names if v.path == n or v.path.endswith("/" + n)]
            assert len(matches) == 1, (prefix, v.path, names)
            assert run.events.plugin(prefix + matches[0]) == plugin
    grad_hists = run.events.tags_of("histograms") - {
        t for t in run.events.tags if t.startswith("weights/")
    }
    assert {t[len("grad/") :] for t in grad_hists} == {
        t[len("weights/") :] for t in run.events.tags if t.startswith("weights/")
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_histograms_and_grad_norms_at_cadence(seed_run, name):
    run = seed_run(name)
    every = run.param("Trainer.histogram_every")
    steps = run.param("Trainer.steps")
    expected = np.arange(0, steps, every)
    sizes = {v.path: int(np.prod(v.shape)) for v in run.trainer.model.trainable_variables}
    hist_tags = sorted(
        t
        for t in run.events.tags
        if t.startswith(("weights/", "grad/"))
        and not t.startswith("grad/norm/")
        and t != "grad/global_norm"
    )
    assert hist_tags
    for tag in hist_tags:
        assert run.events.plugin(tag) == "histograms", tag
        np.testing.assert_array_equal(run.events.steps(tag), expected, err_msg=tag)
        size = next(n for p, n in sizes.items() if p.endswith("/" + tag.split("/", 1)[1]))
        for buckets in run.events.values(tag):
            assert buckets.ndim == 2 and buckets.shape[1] == 3, tag
            assert buckets[:, 2].sum() == size, tag  # every element counted once
            assert np.all(buckets[:, 0] <= buckets[:, 1]), tag
    # Per-variable gradient norms (default cadence: histogram_every) make up the global norm.
    norm_tags = [t for t in run.events.tags if t.startswith("grad/norm/")]
    for tag in norm_tags:
        np.testing.assert_array_equal(run.events.steps(tag), expected, err_msg=tag)
    per_var = np.stack([run.events.values(t) for t in norm_tags]).astype(np.float64)
    global_norm = run.events.scalar("grad/global_norm")[expected]
    np.testing.assert_allclose(np.sqrt((per_var**2).sum(axis=0)), global_norm, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_eval_at_cadence_and_matches_final_model(seed_run, name):
    run = seed_run(name)
    every, steps = run.param("Trainer.eval_every"), run.param("Trainer.steps")
    expected = sorted({k * every - 1 for k in range(1, steps // every + 1)} | {steps - 1})
    for tag in ("eval/loss", "eval/accuracy"):
        assert run.events.plugin(tag) == "scalars"
        np.testing.assert_array_equal(run.events.steps(tag), expected, err_msg=tag)
    data = run.trainer.data
    logits = np.asarray(run.trainer.model(data.x_eval, training=False))
    accuracy = np.mean(np.argmax(logits, axis=1) == data.y_eval)
    loss = cross_entropy(logits, data.y_eval).mean()
    assert run.events.values("eval/accuracy")[-1] == pytest.approx(accuracy, abs=1e-6)
    assert run.events.values("eval/loss")[-1] == pytest.approx(loss, rel=1e-4)
    assert run.result.eval_accuracy == pytest.approx(accuracy, abs=1e-6)
    # Digits with a small MLP learns something in a couple of hundred batches.
    assert accuracy > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_config_text_summary_and_file(seed_run, name):
    run = seed_run(name)
    assert run.events.plugin("config") == "text"
    np.testing.assert_array_equal(run.events.steps("config"), [0])
    text = "\n".join(run.events.text("config"))
    with open(os.path.join(run.run_dir, "config.gin")) as f:
        config_file = f.read()
    controller = {
        "grad_norm": "GradNormController",
        "loss_trend": "LossTrendController",
        "cyclical": "CyclicalController",
    }[name]
    for content in (text, config_file):
        assert f"Trainer.controller = @{controller}()" in content
        for key, value in run.params.items():
            if key.startswith(controller):
                # gin prints floats in its own format; compare the parsed number.
                m = re.search(rf"^\s*{re.escape(key)} = (.+)$", content, re.M)
                assert m, key
                assert float(m.group(1)) == pytest.approx(value), key


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_loss_moving_averages_are_windowed_means(seed_run, name):
    run = seed_run(name)
    loss = run.events.scalar("loss/batch")
    for tag, key in (
        ("loss/ma_short", "Trainer.loss_ma_short"),
        ("loss/ma_long", "Trainer.loss_ma_long"),
    ):
        np.testing.assert_allclose(
            run.events.scalar(tag), windowed_mean(loss, run.param(key)), rtol=1e-5, err_msg=tag
        )
    assert loss[0] > 2.0 and loss[-20:].mean() < loss[:20].mean()  # it trained


# -- the seed rules, recomputed from the logged signals ----------------------------------------


@pytest.mark.slow
def test_grad_norm_lr_follows_rule(seed_run):
    run = seed_run("grad_norm")
    p = run.params
    lr, norm = run.events.scalar("lr"), run.events.scalar("grad/global_norm")
    expected = grad_norm_rule(norm, p)
    np.testing.assert_allclose(lr, expected, rtol=1e-5)
    # The bindings exercise every branch: flat region, the slope, and the floor.
    low = norm < p["GradNormController.low_norm_threshold"]
    sloped = ~low & (expected > p["GradNormController.min_lr"] * (1 + 1e-6))
    floor = ~low & ~sloped
    assert low.sum() >= 5 and sloped.sum() >= 5 and floor.sum() >= 5, (
        low.sum(),
        sloped.sum(),
        floor.sum(),
    )
    assert len(np.unique(lr[sloped])) > 5  # the slope matters
    np.testing.assert_array_equal(run.events.scalar("controller/low_norm"), low.astype(F32))


@pytest.mark.slow
def test_loss_trend_lr_follows_rule(seed_run):
    run = seed_run("loss_trend")
    p = run.params
    window = p["LossTrendController.window"]
    lo, hi = F32(p["LossTrendController.min_lr"]), F32(p["LossTrendController.max_lr"])
    lr, loss = run.events.scalar("lr"), run.events.scalar("loss/batch")
    decisions = loss_trend_decisions(loss, window)
    previous = F32(p["LossTrendController.initial_lr"])
    seen = {"rising": 0, "not rising": 0, "either": 0}
    for t, decision in enumerate(decisions):
        if decision is None:
            expected = [previous]  # until the window is full the LR stays at initial_lr
        else:
            seen[decision] += 1
            candidates = {
                "rising": [p["LossTrendController.decrease"]],
                "not rising": [p["LossTrendController.increase"]],
                "either": [p["LossTrendController.decrease"], p["LossTrendController.increase"]],
            }[decision]
            expected = [np.clip(previous * F32(f), lo, hi) for f in candidates]
        assert any(np.isclose(lr[t], e, rtol=1e-5, atol=0) for e in expected), (
            t,
            decision,
            lr[t],
            expected,
        )
        previous = lr[t]
    assert seen["either"] <= 2 and seen["rising"] >= 5 and seen["not rising"] >= 5, seen
    # The LR was held at the window's first batch, then reached both bounds.
    assert np.all(lr[: window - 1] == F32(p["LossTrendController.initial_lr"]))
    assert np.any(np.isclose(lr, hi, rtol=1e-6)) and np.any(np.isclose(lr, lo, rtol=1e-6))


@pytest.mark.slow
def test_cyclical_lr_follows_rule(seed_run):
    run = seed_run("cyclical")
    p = run.params
    lr, loss = run.events.scalar("lr"), run.events.scalar("loss/batch")
    steps = np.arange(len(lr))
    expected, base, factor, nudged = cyclical_rule(steps, loss, p)
    np.testing.assert_allclose(lr, expected, rtol=1e-5)
    np.testing.assert_allclose(run.events.scalar("controller/base"), base, rtol=1e-5)
    np.testing.assert_allclose(run.events.scalar("controller/factor"), factor, rtol=1e-6)
    assert nudged.sum() >= 10 and (~nudged).sum() >= 10  # the loss crossed the threshold
    assert len(lr) > 2 * p["CyclicalController.cycle_length"]  # cycles restarted
    np.testing.assert_allclose(lr[0], p["CyclicalController.max_lr"], rtol=1e-6)


# -- run directory ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SEEDS)
def test_default_run_name(seed_run, name):
    run = seed_run(name)
    prefix = type(run.trainer.controller).__name__.removesuffix("Controller")
    base = os.path.basename(run.run_dir)
    m = re.fullmatch(rf"{prefix}-(\d{{8}}-\d{{6}})(-\d+)?", base)
    assert m, base
    datetime.datetime.strptime(m.group(1), "%Y%m%d-%H%M%S")


@pytest.mark.slow
def test_run_dir_layout_and_checkpoint_holds_controller_state(seed_run):
    run = seed_run("loss_trend")
    p = run.params
    files = os.listdir(run.run_dir)
    assert "config.gin" in files
    assert any(f.startswith("events.out.tfevents.") for f in files), files
    ckpt = tf.train.latest_checkpoint(os.path.join(run.run_dir, "checkpoints"))
    assert ckpt is not None
    names = [n for n, _ in tf.train.list_variables(ckpt)]
    controller_vars = [n for n in names if n.startswith("controller/")]
    assert controller_vars, names

    # Restore into a fresh controller and feed it one more batch: it must continue from
    # the logged window and LR (a fresh, unrestored one would still be filling its window).
    gin.clear_config()
    kwargs = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("LossTrendController.")}
    fresh = LossTrendController(**kwargs)
    tf.train.Checkpoint(controller=fresh).restore(ckpt).expect_partial()
    loss, lr = run.events.scalar("loss/batch"), run.events.scalar("lr")
    steps = len(lr)
    got = float(fresh(make_signals(step=steps, loss=50.0)))  # a spike: the trend rises
    expected = max(
        lr[-1] * F32(p["LossTrendController.decrease"]), F32(p["LossTrendController.min_lr"])
    )
    assert got == pytest.approx(float(expected), rel=1e-5)
    window = p["LossTrendController.window"]
    recent = np.append(loss[steps - window + 1 :], F32(50.0))
    decisions = loss_trend_decisions(recent, window)
    assert decisions[-1] == "rising"


def tiny_trainer() -> Trainer:
    return small_trainer(steps=2, controller=ConstantController(lr=0.05), steps_per_loop=2)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two 2-batch runs started with the clock frozen at one second."""

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 2, 3, 4, 5)

    logdir = tmp_path_factory.mktemp("tiny")
    trainer = tiny_trainer()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rundir_module, "datetime", types.SimpleNamespace(datetime=FrozenDatetime))
        first = trainer.fit(logdir=str(logdir), quiet=True)
        second = tiny_trainer().fit(logdir=str(logdir), quiet=True)
    return trainer, logdir, first, second


@pytest.mark.slow
def test_two_runs_in_the_same_second_get_distinct_dirs(tiny_runs):
    _, logdir, first, second = tiny_runs
    assert first.run_dir != second.run_dir
    for result in (first, second):
        assert os.path.dirname(result.run_dir) == str(logdir)
        base = os.path.basename(result.run_dir)
        assert base.startswith("Constant-20240102-030405"), base
        assert os.path.isfile(os.path.join(result.run_dir, "config.gin"))
        assert read_events(result.run_dir).tags >= set(BATCH_TAGS)
    assert os.path.basename(first.run_dir) == "Constant-20240102-030405"


@pytest.mark.slow
def test_existing_run_name_is_refused_and_untouched(tiny_runs):
    trainer, logdir, first, _ = tiny_runs
    before = snapshot(first.run_dir)
    listing = sorted(os.listdir(logdir))
    with pytest.raises(RunDirExistsError) as info:
        trainer.fit(logdir=str(logdir), run_name=os.path.basename(first.run_dir), quiet=True)
    assert os.path.basename(first.run_dir) in str(info.value)
    assert snapshot(first.run_dir) == before
    assert sorted(os.listdir(logdir)) == listing


def test_second_fit_of_the_same_trainer_works_or_fails_clearly(tmp_path):
    """`fit` is public; a second call (e.g. in a notebook) must either train into a new
    run directory or refuse with a clear message, never die inside TensorFlow on the
    first run's closed summary writer."""
    trainer = tiny_trainer()
    first = trainer.fit(logdir=str(tmp_path), run_name="first", quiet=True)
    try:
        second = trainer.fit(logdir=str(tmp_path), run_name="second", quiet=True)
    except tf.errors.OpError as e:
        pytest.fail(
            f"second fit() failed inside TensorFlow: {type(e).__name__}: {str(e).splitlines()[0]}"
        )
    except (RuntimeError, ValueError) as e:
        assert "fit" in str(e), e
        return
    assert second.run_dir != first.run_dir
    events = read_events(second.run_dir)
    for tag in BATCH_TAGS:
        assert len(events.steps(tag)) == 2, tag


# -- non-finite loss, and the guard --------------------------------------------------------------


def test_non_finite_loss_raises_naming_the_step(tmp_path):
    data = digits()
    data = data._replace(x_train=data.x_train * np.float32(1e9))  # huge but finite inputs
    gin.clear_config()
    trainer = Trainer(
        steps=40,
        controller=ConstantController(lr=0.1),
        dataset=data,
        model=functools.partial(mlp, hidden=(16,)),
        steps_per_loop=8,
        histogram_every=0,
        eval_every=0,
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(logdir=str(tmp_path), run_name="boom", quiet=True)
    events = read_events(tmp_path / "boom")
    loss = events.scalar("loss/batch")
    norm = events.scalar("grad/global_norm")
    # Every batch that ran before the error is on disk, for every per-batch tag.
    ran = int(trainer.step.numpy())
    for tag in (*BATCH_TAGS, "guard/lr_rejected"):
        np.testing.assert_array_equal(events.steps(tag), np.arange(ran), err_msg=tag)
    bad = np.flatnonzero(~np.isfinite(loss) | ~np.isfinite(norm))
    assert bad.size, "the run never went non-finite; the test's data is too tame"
    m = re.search(r"\bstep (\d+)\b", str(info.value))
    assert m, str(info.value)
    assert int(m.group(1)) == bad[0]
    assert len(loss) > bad[0]  # flushed up to and including the bad batch
    assert np.all(np.isfinite(loss[: bad[0]]))
    assert os.path.isfile(tmp_path / "boom" / "config.gin")


class FlakyController(Controller):
    """Proposes 0.02 + 0.01 * step, but NaN on steps 0, 5, 10, -0.5 on 3 and +Inf on 7."""

    def __init__(self):
        super().__init__(name="flaky")
        self.initial_lr = 0.05

    @staticmethod
    def proposals(steps: np.ndarray) -> np.ndarray:
        lr = 0.02 + 0.01 * steps.astype(np.float64)
        lr[steps % 5 == 0] = np.nan
        lr[steps == 3] = -0.5
        lr[steps == 7] = np.inf
        return lr

    def compute(self, signals):
        step = signals.step
        lr = 0.02 + 0.01 * tf.cast(step, tf.float32)
        lr = tf.where(tf.equal(step % 5, 0), tf.constant(math.nan), lr)
        lr = tf.where(tf.equal(step, 3), -0.5, lr)
        lr = tf.where(tf.equal(step, 7), tf.constant(math.inf), lr)
        return ControllerOutput(lr, {})


@pytest.mark.slow
def test_guard_keeps_previous_lr_and_logged_lr_is_applied(tmp_path):
    steps = 12
    gin.clear_config()
    trainer = Trainer(
        steps=steps,
        controller=FlakyController(),
        steps_per_loop=4,
        histogram_every=0,
        eval_every=0,
        checkpoint_every=1,
        keep_checkpoints=steps + 1,
        model=functools.partial(mlp, hidden=(8,)),
    )
    result = trainer.fit(logdir=str(tmp_path), run_name="guard", quiet=True)
    events = read_events(result.run_dir)
    proposed = FlakyController.proposals(np.arange(steps))
    expected, rejected, current = [], [], 0.05
    for value in proposed:
        ok = np.isfinite(value) and value >= 0
        current = value if ok else current
        expected.append(current)
        rejected.append(0.0 if ok else 1.0)
    lr = events.scalar("lr")
    np.testing.assert_allclose(lr, expected, rtol=1e-6)
    np.testing.assert_array_equal(events.scalar("guard/lr_rejected"), rejected)
    assert result.final_lr == pytest.approx(expected[-1], rel=1e-6)

    # The logged LR is the one applied to that batch: with plain SGD the update of batch
    # t (checkpoint t -> t+1, checkpoint k holds the weights after k batches) has norm
    # lr[t] * grad/global_norm[t].
    norm = events.scalar("grad/global_norm")
    ckpt_dir = os.path.join(result.run_dir, "checkpoints")

    def weights_after(k: int) -> list[np.ndarray]:
        model = mlp(trainer.data.input_shape, trainer.data.num_classes, hidden=(8,))
        tf.train.Checkpoint(model=model).restore(
            os.path.join(ckpt_dir, f"ckpt-{k}")
        ).expect_partial()
        return [np.asarray(v, np.float64) for v in model.trainable_variables]

    weights = [weights_after(k) for k in range(1, steps + 1)]
    for t in range(1, steps):
        step_norm = math.sqrt(
            sum(((a - b) ** 2).sum() for a, b in zip(weights[t], weights[t - 1], strict=True))
        )
        assert step_norm == pytest.approx(lr[t] * norm[t], rel=2e-3), t


# -- compiled loop: one trace, no host round trips, steps_per_loop-invariant -----------------


class RecordingFunction:
    """A `tf.function` that records each call's arguments (calls pass straight through)."""

    def __init__(self, fn, log: list):
        self.fn, self.log = fn, log
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        self.log.append((self, args))
        return self.fn(*args, **kwargs)

    def __get__(self, instance, owner=None):
        return self if instance is None else types.MethodType(self, instance)

    def __getattr__(self, name):
        return getattr(self.fn, name)


class CompiledFunctions:
    """While active, every `tf.function(...)` created anywhere is a RecordingFunction.

    This finds the trainer's compiled loops however the trainer organises them (one
    loop, or one per summary group), so the tests see every compiled call."""

    def __init__(self):
        self.functions: list[RecordingFunction] = []
        self.log: list[tuple[RecordingFunction, tuple]] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real = tf.function

        def recording(func=None, *args, **kwargs):
            if func is None:  # used as @tf.function(...)
                return lambda f: recording(f, *args, **kwargs)
            wrapped = RecordingFunction(real(func, *args, **kwargs), self.log)
            self.functions.append(wrapped)
            return wrapped

        mp.setattr(tf, "function", recording)

    @staticmethod
    def _is_loop_call(args: tuple) -> bool:
        return (
            len(args) >= 1
            and isinstance(args[-1], tf.Tensor)
            and args[-1].dtype.is_integer
            and args[-1].shape.rank == 0
        )

    @property
    def loops(self) -> list[RecordingFunction]:
        """The training loops: functions called with a number of batches."""
        return [f for f in self.functions if f.calls and all(map(self._is_loop_call, f.calls))]

    @property
    def batches_per_call(self) -> list[int]:
        return [int(args[-1]) for f, args in self.log if f in self.loops]


LOOP_PARAMS = {
    "Trainer.steps": 30,
    "Trainer.eval_every": 0,
    "Trainer.log_every": 30,
    "Trainer.histogram_every": 10,
    "Trainer.checkpoint_every": 0,
    "mlp.hidden": (16,),
    "Trainer.controller": "@LossTrendController()",
    "LossTrendController.window": 6,
    "LossTrendController.initial_lr": 0.1,
    "LossTrendController.max_lr": 0.5,
}


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory):
    """The same run with steps_per_loop 7 and 1, recording the compiled calls."""
    logdir = tmp_path_factory.mktemp("loops")
    runs = {}
    for spl in (7, 1):
        compiled = CompiledFunctions()
        with pytest.MonkeyPatch.context() as mp:
            compiled.install(mp)
            run = train(
                logdir, [GIN_DIR / "base.gin"], {**LOOP_PARAMS, "Trainer.steps_per_loop": spl}
            )
        runs[spl] = (run, compiled)
    return runs


@pytest.mark.slow
def test_compiled_loops_traced_once_over_several_blocks(loop_runs):
    run, compiled = loop_runs[7]
    sizes = compiled.batches_per_call
    assert compiled.loops, "no compiled training loop was called"
    assert sum(sizes) == 30 and max(sizes) == 7, sizes
    assert len(sizes) >= 5 and sizes[-1] < 7 and len(set(sizes)) >= 2, sizes
    for fn in compiled.functions:
        if fn.calls:
            assert fn.experimental_get_tracing_count() == 1, (fn.fn, len(fn.calls))
    loop = run.trainer.train_loop
    assert loop.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(run.events.steps("lr"), np.arange(30))


FORBIDDEN_OPS = {
    "PyFunc",
    "EagerPyFunc",
    "PyFuncStateless",  # Python callbacks
    "_Send",
    "_Recv",
    "_HostSend",
    "_HostRecv",  # explicit transfers
    "Copy",
    "CopyHost",
    "DebugIdentity",
    "DebugIdentityV2",
    "Print",
    "PrintV2",
}


# Summary ops: the per-batch log is a block of rows returned by the loop and written
# by `batch_log.BlockWriter` after the call, never by an op inside the loop.
SUMMARY_OPS = {
    "WriteSummary",
    "WriteScalarSummary",
    "WriteHistogramSummary",
    "WriteRawProtoSummary",
    "WriteGraphSummary",
    "ImportEvent",
    "FlushSummaryWriter",
    "CloseSummaryWriter",
    "CreateSummaryFileWriter",
    "SummaryWriter",
}


@pytest.mark.slow
def test_compiled_loops_have_no_python_summary_or_host_ops(loop_runs):
    """Per-batch logging on (the run's events hold every batch), yet the compiled
    loops, while bodies included, hold no summary op and no host transfer."""
    run, compiled = loop_runs[7]
    np.testing.assert_array_equal(run.events.steps("grad/global_norm"), np.arange(30))
    all_ops: set[str] = set()
    for fn in compiled.loops:
        concrete = fn.get_concrete_function(tf.constant(7, tf.int64))
        assert fn.experimental_get_tracing_count() == 1  # the cached trace, not a new one
        graph_def = concrete.graph.as_graph_def()
        ops = {node.op for node in graph_def.node}
        for function in graph_def.library.function:  # loop bodies live here
            ops |= {node.op for node in function.node_def}
        assert not ops & (FORBIDDEN_OPS | SUMMARY_OPS), sorted(ops & (FORBIDDEN_OPS | SUMMARY_OPS))
        all_ops |= ops
    # Sanity: the loop, the per-batch work and the row buffer were inspected.
    assert all_ops & {"While", "StatelessWhile"}, sorted(all_ops)
    assert {"TensorListSetItem", "AssignVariableOp"} <= all_ops, sorted(all_ops)


@pytest.mark.slow
def test_steps_per_loop_does_not_change_results(loop_runs):
    (a, _), (b, compiled_b) = loop_runs[7], loop_runs[1]
    assert compiled_b.batches_per_call == [1] * 30
    for tag in ("lr", "loss/batch", "grad/global_norm", "loss/ma_long"):
        np.testing.assert_allclose(
            a.events.scalar(tag), b.events.scalar(tag), rtol=1e-5, err_msg=tag
        )
    # The controller's state carried across block boundaries: the LR moved.
    assert len(np.unique(a.events.scalar("lr"))) > 3
    # Histograms land on the same steps whatever the blocks.
    for run in (a, b):
        tags = run.events.tags_of("histograms")
        assert len(tags) == 2 * len(run.trainer.model.trainable_variables), tags
        for tag in tags:
            np.testing.assert_array_equal(run.events.steps(tag), [0, 10, 20], err_msg=tag)


def test_layer_names_are_the_same_for_every_model_in_a_process():
    """Tags such as `grad/dense/kernel` must line up across the runs of one sweep."""
    from lrresearch.workloads.models import cnn, mlp

    for build, shape in ((mlp, (64,)), (cnn, (8, 8, 1))):
        first, second = ([v.path for v in build(shape, 10).trainable_variables] for _ in range(2))
        assert first == second
        assert len(set(first)) == len(first)


def test_steps_per_loop_beyond_the_run_sizes_buffers_by_the_run(tmp_path):
    """`steps_per_loop = 10**9` with a 30-batch run: the call's buffers hold the 30
    batches it can run (the old code sized them by steps_per_loop: a segfault), and
    every batch is logged."""
    gin.clear_config()
    trainer = Trainer(
        steps=30, steps_per_loop=10**9, histogram_every=0, eval_every=0, log_every=30,
        checkpoint_every=0, controller=ConstantController(lr=0.05),
        model=functools.partial(mlp, hidden=(8,)),
    )  # fmt: skip
    trainer.build()
    assert trainer.call_capacity == 30
    result = trainer.fit(logdir=str(tmp_path), quiet=True)
    np.testing.assert_array_equal(read_events(result.run_dir).steps("lr"), np.arange(30))
    histograms = Trainer(steps=1000, steps_per_loop=10**9, histogram_every=100)
    histograms.build()
    assert histograms.call_capacity == 100  # the next histogram is due at most 100 on


def test_the_compiled_loop_is_traced_without_autograph(tmp_path, monkeypatch):
    """The loop and everything it calls is graph code already: AutoGraph's source
    conversion (most of the first call before issue 22) converts nothing."""
    from tensorflow.python.autograph.impl import api

    converted, convert = [], api._convert_actual
    monkeypatch.setattr(
        api, "_convert_actual", lambda f, ctx: converted.append(f) or convert(f, ctx)
    )
    trainer = tiny_trainer()
    trainer.build()
    with trainer.logging_to(tf.summary.create_file_writer(str(tmp_path))):
        trainer.run_steps(2)
    assert converted == []


@pytest.mark.slow
def test_trainers_evaluated_in_one_process_log_no_retracing_warning():
    """A sweep builds a trainer per point in one process: each traces its own evaluation
    once, which TF counted as retraces of one function (a false "triggered tf.function
    retracing" warning from the fifth point on)."""
    import logging

    class Warnings(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    caught = Warnings()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(caught)
    try:
        for _ in range(6):
            trainer = small_trainer(build=True, steps=1, eval_every=1)
            trainer.evaluate()
            assert trainer.evaluate.experimental_get_tracing_count() == 1
    finally:
        logger.removeHandler(caught)
        gin.clear_config()
    assert not [m for m in caught.messages if "retracing" in m]
