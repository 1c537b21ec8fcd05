"""Non-finite guard: NaN/Inf batches are skipped in-graph, later LRs are cut, and a run
that keeps diverging stops with a checkpoint of the last good state. `NonFiniteGuard`
alone against a numpy reference; the trainer end to end."""

from __future__ import annotations

import os
import re

import gin
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.controllers import ConstantController
from lrresearch.step.guard import NonFiniteGuard
from lrresearch.training.outer_loop import NonFiniteLossError
from lrresearch.workloads.data import digits
from tests.support import Events, small_trainer


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_nan_batches_are_skipped_and_later_lrs_cut(tmp_path, jit_compile):
    data = digits()
    x = data.x_train[:320].copy()
    x[7, 0, 0, 0] = np.nan  # one poisoned example: one NaN batch per epoch
    poisoned = data._replace(x_train=x, y_train=data.y_train[:320])
    trainer = small_trainer(
        hidden=(16,),
        steps=100,
        batch_size=32,
        steps_per_loop=10,
        controller=ConstantController(0.05),
        dataset=poisoned,
        nonfinite_lr_factor=0.9,
        max_consecutive_nonfinite=3,
        jit_compile=jit_compile,  # the guard and the in-graph sampler under XLA too
    )
    with gin.unlock_config():
        result = trainer.fit(logdir=str(tmp_path), run_name="nan", quiet=True)
    events = Events(result.run_dir)
    loss, norm, skipped, lr = (
        events.scalar(t) for t in ("loss/batch", "grad/global_norm", "guard/skipped", "lr")
    )
    # A NaN input makes the gradient NaN; whether the loss is NaN too depends on the
    # CPU (relu(NaN) is 0 on this AVX-512 machine's vectorized path, NaN elsewhere).
    bad = ~np.isfinite(loss) | ~np.isfinite(norm)
    assert bad.sum() == 10  # one per epoch of 10 batches
    np.testing.assert_array_equal(skipped, np.cumsum(bad))
    np.testing.assert_allclose(lr, 0.05 * 0.9 ** (skipped - bad), rtol=1e-5)
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)
    assert np.isfinite(result.eval_loss)


def test_diverging_run_stops_with_last_good_checkpoint(tmp_path):
    trainer = small_trainer(
        hidden=(16,),
        steps=300,
        steps_per_loop=10,
        log_every=10,
        controller=ConstantController(1e30),
        max_consecutive_nonfinite=3,
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(logdir=str(tmp_path), run_name="boom", quiet=True)
    events = Events(tmp_path / "boom")
    loss = events.values("loss/batch")
    first_bad = int(np.flatnonzero(~np.isfinite(loss))[0])
    assert f"at step {first_bad};" in str(info.value)
    assert "in a row" in str(info.value)
    assert len(loss) < 300  # it stopped early
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "boom", "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    names = [
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith("optimizer/_trainable_variables/")
    ]
    assert names and all(np.isfinite(reader.get_tensor(n)).all() for n in names)


def test_a_logdir_that_cannot_be_created_is_a_clear_error(tmp_path, capsys):
    from lrresearch.cli import commands as cli

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train", f"--logdir={blocker}/runs", "--gin_param=Trainer.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "cannot create logdir" in err and "--logdir" in err


def test_bad_guard_settings_name_the_parameter():
    with pytest.raises(ValueError, match=r"Trainer\.nonfinite_lr_factor"):
        small_trainer(hidden=(16,), nonfinite_lr_factor=0.0)
    with pytest.raises(ValueError, match=r"Trainer\.max_consecutive_nonfinite"):
        small_trainer(hidden=(16,), max_consecutive_nonfinite=-1)


# -- NonFiniteGuard alone ------------------------------------------------------------------


def reference(losses, norms, max_consecutive: int, lr_factor: float) -> dict[str, np.ndarray]:
    """The guard's rule in numpy, batch by batch: the state after each batch."""
    skipped = consecutive = 0
    lr_scale, first = np.float32(1.0), -1
    rows = {k: [] for k in ("applied", "skipped", "consecutive", "lr_scale", "first", "stop")}
    for step, (loss, norm) in enumerate(zip(losses, norms, strict=True)):
        finite = bool(np.isfinite(loss) and np.isfinite(norm))
        if not finite:
            skipped, consecutive = skipped + 1, consecutive + 1
            lr_scale = np.float32(lr_scale * np.float32(lr_factor))
            first = step if first < 0 else first
        else:
            consecutive = 0
        for key, value in (
            ("applied", finite),
            ("skipped", skipped),
            ("consecutive", consecutive),
            ("lr_scale", lr_scale),
            ("first", first),
            ("stop", consecutive > 0 and consecutive >= max_consecutive),
        ):
            rows[key].append(value)
    return {k: np.array(v) for k, v in rows.items()}


def batches(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Losses and norms with NaN/+Inf/-Inf in either, alone and in streaks of 1-6."""
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.1, 3.0, n).astype(np.float32)
    norms = rng.uniform(0.0, 10.0, n).astype(np.float32)
    step = 3
    while step < n:
        streak = int(rng.integers(1, 7))
        for i in range(step, min(step + streak, n)):
            target = losses if rng.random() < 0.5 else norms
            target[i] = rng.choice([np.nan, np.inf, -np.inf])
        step += streak + int(rng.integers(1, 12))
    return losses, norms


def compiled_guard_loop(guard: NonFiniteGuard):
    """A `tf.function` running the guard over a call's batches in a `tf.range` loop; the
    update counts itself. Returns the function, the update counter and the global step."""
    updates = tf.Variable(0, dtype=tf.int64)
    global_step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def run(losses, norms):
        n = tf.shape(losses)[0]
        rows = [tf.TensorArray(d, size=n) for d in (tf.bool, tf.int64, tf.int64, tf.float32)]
        for i in tf.range(n):
            finite = guard.apply_if_finite(
                global_step, losses[i], norms[i], lambda: updates.assign_add(1)
            )
            values = (finite, guard.skipped, guard.consecutive, guard.lr_scale)
            rows = [r.write(i, v) for r, v in zip(rows, values, strict=True)]
            global_step.assign_add(1)
        return [r.stack() for r in rows], guard.first_nonfinite_step.read_value()

    return run, updates, global_step


@pytest.mark.parametrize("max_consecutive, lr_factor", [(3, 0.5), (0, 0.9), (6, 1.0)])
def test_guard_counts_skips_cuts_and_stops_as_the_numpy_reference(max_consecutive, lr_factor):
    guard = NonFiniteGuard(max_consecutive, lr_factor)
    run, updates, _ = compiled_guard_loop(guard)
    losses, norms = batches(seed=max_consecutive, n=160)
    expected = reference(losses, norms, max_consecutive, lr_factor)
    per_call = 20  # the host reads the guard between calls only
    for start in range(0, len(losses), per_call):
        call = slice(start, start + per_call)
        (applied, skipped, consecutive, lr_scale), first = run(losses[call], norms[call])
        np.testing.assert_array_equal(applied.numpy(), expected["applied"][call])
        np.testing.assert_array_equal(skipped.numpy(), expected["skipped"][call])
        np.testing.assert_array_equal(consecutive.numpy(), expected["consecutive"][call])
        np.testing.assert_allclose(lr_scale.numpy(), expected["lr_scale"][call], rtol=1e-6)
        last = start + per_call - 1
        assert int(first) == expected["first"][last]
        assert int(updates.numpy()) == expected["applied"][: last + 1].sum()
        assert guard.should_stop() == expected["stop"][last], start
        message = guard.stop_message("runs/r")
        assert (message is not None) == expected["stop"][last]
    assert run.experimental_get_tracing_count() == 1
    assert 0 < expected["skipped"][-1] < len(losses) and expected["stop"].any()


def test_guard_graph_has_no_python_op():
    run, _, _ = compiled_guard_loop(NonFiniteGuard())
    graph = run.get_concrete_function(
        tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32)
    ).graph.as_graph_def()
    ops = {n.op for n in graph.node}
    ops |= {n.op for f in graph.library.function for n in f.node_def}
    assert "While" in ops or "StatelessWhile" in ops  # the tf.range loop is in-graph
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}, ops


def test_stop_message_says_where_it_began_and_what_to_change():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.stop_message("runs/r") is None and not guard.should_stop()
    for step, loss in enumerate([1.0, np.nan, 2.0, np.inf, np.nan]):
        guard.apply_if_finite(step, tf.constant(loss), tf.constant(1.0), lambda: None)
    assert guard.should_stop()
    assert guard.stop_message("runs/r") == (
        "the loss or gradient norm became NaN/Inf at step 1; 2 batches in a row were "
        "NaN/Inf and skipped (3 in all), so the run stopped. The weights of the last good "
        f"batch are in {os.path.join('runs/r', 'checkpoints')} and the summaries up to "
        "here in runs/r. Lower the LR (e.g. the controller's max_lr/base_lr), set "
        "Trainer.clip_norm, or check the data for NaN/Inf."
    )
    in_memory = guard.stop_message(None, "the optimizer's global_clipnorm")
    assert "The model keeps the weights of the last good batch." in in_memory
    assert "set the optimizer's global_clipnorm," in in_memory
    guard.apply_if_finite(5, tf.constant(1.0), tf.constant(1.0), lambda: None)
    assert not guard.should_stop()  # a good batch ends the streak
    assert float(guard.summaries()["guard/skipped"]) == 3.0


def test_guard_restores_a_checkpoint_of_the_trainers_inline_guard(tmp_path):
    """Before `NonFiniteGuard`, the trainer's checkpoint held the guard's variables as
    root entries; `checkpoint_items()` gives those names, so such checkpoints restore."""
    legacy = {
        "guard_skipped": tf.Variable(4, dtype=tf.int64),
        "guard_consecutive": tf.Variable(2, dtype=tf.int64),
        "guard_lr_scale": tf.Variable(0.0625),
        "guard_first_nonfinite_step": tf.Variable(17, dtype=tf.int64),
    }
    path = tf.train.Checkpoint(**legacy).save(str(tmp_path / "legacy"))
    guard = NonFiniteGuard(max_consecutive=2)
    assert list(guard.checkpoint_items()) == list(legacy)
    tf.train.Checkpoint(**guard.checkpoint_items()).restore(path).assert_consumed()
    assert (int(guard.skipped), int(guard.consecutive), int(guard.first_nonfinite_step)) == (
        4,
        2,
        17,
    )
    assert float(guard.lr_scale) == 0.0625 and guard.should_stop()
    guard.reset()
    assert (int(guard.skipped), float(guard.lr_scale), int(guard.first_nonfinite_step)) == (
        0,
        1.0,
        -1,
    )


@pytest.mark.parametrize(
    "owner, names",
    [
        (None, ("NonFiniteGuard.max_consecutive", "NonFiniteGuard.lr_factor")),
        ("Trainer", ("Trainer.max_consecutive_nonfinite", "Trainer.nonfinite_lr_factor")),
    ],
)
def test_guard_arguments_are_checked_under_the_owners_names(owner, names):
    count, factor = (re.escape(n) for n in names)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match=rf"^{count} must be an int >= 0, got "):
            NonFiniteGuard(bad, 0.5, owner=owner)
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=rf"^{factor} must be in \(0, 1\], got "):
            NonFiniteGuard(3, bad, owner=owner)
    for bad in (float("nan"), "0.5"):
        with pytest.raises(ValueError, match=rf"^{factor} must be a finite number, got "):
            NonFiniteGuard(3, bad, owner=owner)
