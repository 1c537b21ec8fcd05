"""The parameter-free optimizers inside lrresearch's machinery (their arithmetic is
checked against numpy transcriptions of the authors' code in their own test files):
logged per batch, compiled once under XLA with the same numbers, restored exactly from
a checkpoint (Schedule-Free's written on its average), evaluated on the right weights,
in Keras's `fit`, and under `MirroredStrategy` (in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import ConstantController
from lrresearch.keras_fit import ControlledModel, PerBatchSummaries
from lrresearch.training import compiled_loop
from lrresearch.workloads import model_loss as workload
from lrresearch.workloads.models import mlp
from tests.support import (
    PARAMETER_FREE_PER_CALL,
    PARAMETER_FREE_STEPS,
    REPO,
    digit_batches,
    parameter_free_optimizers,
    parameter_free_trainer,
    read_events,
)

pytestmark = [pytest.mark.slow]

# Each optimizer with the LR it is meant to run at; the trainer the tests (and the
# mirrored run, in its own process) build around it.
LRS = parameter_free_optimizers()
STEPS, PER_CALL = PARAMETER_FREE_STEPS, PARAMETER_FREE_PER_CALL
make_trainer = parameter_free_trainer


def weights(trainer) -> list[np.ndarray]:
    return [v.numpy() for v in trainer.variables]


@pytest.fixture(scope="module")
def mirrored():
    """Every optimizer under MirroredStrategy (2 logical CPUs), started at once in its
    own process; its report is read by the test that needs it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.optimizers.mirrored_optimizers_run", *LRS],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    yield proc
    proc.kill()


@pytest.fixture(scope="module", params=list(LRS))
def logged(request, tmp_path_factory):
    if any("mirrored" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("mirrored")  # started first: it trains alongside these runs
    # A checkpoint after each call: `test_a_checkpoint_restores_exactly` restores them.
    trainer = make_trainer(request.param, checkpoint_every=PER_CALL)
    result = trainer.fit(str(tmp_path_factory.mktemp("optimizers")), quiet=True)
    return request.param, trainer, read_events(result.run_dir), result


def test_effective_step_is_logged_every_batch(logged):
    name, _, events, _ = logged
    np.testing.assert_array_equal(events.steps("optimizer/effective_lr"), np.arange(STEPS))
    effective = events.scalar("optimizer/effective_lr")
    assert np.all(np.isfinite(effective)) and np.all(effective >= 0), name
    lr = events.scalar("lr")
    if name == "ScheduleFreeWrapper":  # the LR its base stepped z with: the controller's
        np.testing.assert_array_equal(effective, lr)
    else:  # the optimizer's own value, not the controller's LR
        assert not np.allclose(effective, lr), name
    assert {t for t in events.tags if t.startswith("optimizer/")} - {"optimizer/effective_lr"}
    if name == "Mechanic":  # the base's update times s; s starts at s_init = 1e-8, grows
        scale = events.scalar("optimizer/scale")
        assert scale[-1] > 100 * scale[0] > 0
        np.testing.assert_allclose(effective, np.maximum(scale, 0) * lr, rtol=1e-6)
        return
    assert events.scalar("loss/batch")[-5:].mean() < events.scalar("loss/batch")[:5].mean()
    if name.startswith("MoMo"):  # tau: the Polyak step, capped at lr (/ (1 - 0.9^k))
        cap = lr if name == "MoMo" else lr / (1 - 0.9 ** np.arange(1, STEPS + 1))
        assert np.all(effective <= cap * (1 + 1e-6)) and np.any(effective < 0.99 * cap)
        return
    if name == "COCOB":  # batch 1 moves each weight by 1/alpha = 0.01 against its gradient
        distance, norm = events.scalar("optimizer/distance"), events.scalar("grad/global_norm")
        np.testing.assert_allclose(effective[0] * norm[0], distance[0], rtol=1e-5)
        assert 0.01 < distance[0] < distance[-1]
    elif name == "ScheduleFreeRAdam":  # RAdam's rectification: 0 for 4 batches, then < 1
        k = np.arange(1, STEPS + 1)
        rho_inf = 2 / (1 - 0.999) - 1
        rho = rho_inf - 2 * k * 0.999**k / (1 - 0.999**k)
        rect = np.sqrt(np.clip((rho - 4) * (rho - 2) * rho_inf, 0, None)
                       / ((rho_inf - 4) * (rho_inf - 2) * rho))  # fmt: skip
        np.testing.assert_allclose(effective, lr * np.where(rho > 4, rect, 0), rtol=1e-6)
        assert np.all(effective[:4] == 0) and effective[4] > 0
    elif name in ("ScheduleFreeSGD", "ScheduleFreeAdamW"):  # their own warmup, 5 batches
        np.testing.assert_allclose(effective, lr * np.minimum(1, np.arange(1, STEPS + 1) / 5))
    elif name in ("Prodigy", "DAdaptAdam"):  # d0 * lr, then the d of the batch before (lr 1)
        d = events.scalar("optimizer/d")
        assert effective[0] == np.float32(1e-6) and d[-1] > 1e-6
        np.testing.assert_allclose(effective[1:], d[:-1], rtol=1e-6)


def layout_charts(run_dir: str) -> list[str]:
    """The chart titles of the Custom Scalars layout a run wrote, read back with
    TensorBoard's loader."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    raw = tf.make_ndarray(acc.Tensors("custom_scalars__config__")[0].tensor_proto).item()
    layout = layout_pb2.Layout.FromString(raw)
    return [(cat.title, c.title) for cat in layout.category for c in cat.chart]


def test_custom_scalars_show_the_applied_step_below_the_lr(logged, seed_run):
    *_, result = logged
    charts, plain = layout_charts(result.run_dir), layout_charts(seed_run("grad_norm").run_dir)
    assert charts[0] == ("lrresearch", "LR")
    # A category of its own after the others (where TensorBoard keeps it when it merges
    # these runs with others); a run without the step gets no empty chart.
    assert charts == [*plain, ("optimizer", "Step the optimizer applied")]


def test_xla_gives_the_same_weights_and_compiles_once(logged):
    name, plain, _, _ = logged
    xla = make_trainer(name, jit_compile=True)
    xla.run_steps(STEPS)  # several calls of one loop (`call_capacity` batches each)
    # The loop is one `jit_compile` function (XLA compiles each trace once, as it runs):
    # traced once means compiled once; a retrace on the second call would count 2.
    assert [loop.experimental_get_tracing_count() for loop in xla.loops.values()] == [1]
    assert compiled_loop.whole_loop_compiles(xla), name  # the loop, not just each step
    for a, b in zip(weights(xla), weights(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)


def test_a_checkpoint_restores_exactly(logged):
    """Fresh trainers restore the logged run's checkpoints (written by `fit` on the
    weights to evaluate): the one after the first call continues bit for bit as the run
    did; the last one holds the run's eval weights and swaps back to its train weights."""
    name, trainer, _, result = logged
    folder = f"{result.run_dir}/checkpoints"
    b = make_trainer(name)
    b.checkpoint.restore(f"{folder}/ckpt-{PER_CALL}").assert_consumed()
    b.after_restore()
    b.run_steps(STEPS - PER_CALL)
    for x, y in zip(weights(trainer), weights(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)
    with trainer.eval_weights():
        evaluated = weights(trainer)
    c = make_trainer(name)  # built, not traced: restoring traces nothing
    c.checkpoint.restore(f"{folder}/ckpt-{STEPS}").assert_consumed()
    for x, y in zip(evaluated, weights(c), strict=True):  # what it holds: the eval weights
        np.testing.assert_array_equal(x, y, err_msg=name)
    c.after_restore()
    for x, y in zip(weights(trainer), weights(c), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_evaluation_is_on_the_eval_weights(logged):
    name, trainer, _, result = logged
    trained = weights(trainer)
    with trainer.eval_weights():
        evaluated = weights(trainer)
        t = trainer
        manual = workload.evaluate(t.model, t.loss_fn, t.metrics, t.eval_dataset)
    assert result.evals["loss"] == pytest.approx(float(manual["loss"]), rel=1e-5)
    for x, y in zip(weights(trainer), trained, strict=True):
        np.testing.assert_array_equal(x, y)  # put back bit for bit
    differs = any(not np.array_equal(x, y) for x, y in zip(evaluated, trained, strict=True))
    assert differs == name.startswith("ScheduleFree"), name


def test_in_keras_fit(logged, tmp_path):
    name, _, _, _ = logged
    cls, lr = LRS[name]
    keras.utils.set_random_seed(0)
    model = ControlledModel(mlp((8, 8, 1), 10, hidden=(16,)), ConstantController(lr))
    model.compile(
        optimizer=cls(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=5,
    )
    x, y = digit_batches(STEPS)
    summaries = PerBatchSummaries(str(tmp_path))
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0, callbacks=[summaries])
    summaries.close()
    events = read_events(tmp_path)
    np.testing.assert_array_equal(events.steps("optimizer/effective_lr"), np.arange(STEPS))
    trained = [v.numpy() for v in model.trainable_variables]
    model.evaluate(x[0], y[0], verbose=0)
    for a, b in zip(trained, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.subprocess
@pytest.mark.distributed
def test_mirrored_matches_single_device(logged, mirrored):
    name, trainer, _, _ = logged
    out, err = mirrored.communicate(timeout=600) if mirrored.returncode is None else ("", "")
    if out:
        mirrored.report = json.loads(out.strip().splitlines()[-1])
    report = getattr(mirrored, "report", None)
    assert report is not None, err[-3000:]
    got = report[name]
    assert got["replicas"] == 2 and got["copies_agree"], name
    for a, b in zip(got["weights"], weights(trainer), strict=True):
        np.testing.assert_allclose(np.array(a), b, rtol=2e-4, atol=2e-6, err_msg=name)
