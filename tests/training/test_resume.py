"""Exact resume: a run killed with SIGKILL mid-run and resumed equals an uninterrupted
one (weights, `lr`, `loss/batch`), and TensorBoard's loader shows every step once."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.workloads import tf_data_cache
from tests.support import (
    REPO,
    RESUMABLE_EVERY,
    RESUMABLE_STEPS,
    Events,
    Finished,
    default_ctrl_c,
    finish,
    kill_at_step,
    start_cli,
)

PARAMS = [
    "--gin_param=Trainer.steps = 300",
    "--gin_param=Trainer.checkpoint_every = 40",
    "--gin_param=Trainer.steps_per_loop = 10",
    "--gin_param=Trainer.log_every = 10",
    "--gin_param=Trainer.deterministic = True",
    "--gin_param=Trainer.controller = @LossTrendController()",
    "--gin_param=LossTrendController.window = 20",
    "--gin_param=LossTrendController.max_lr = 0.2",
    "--gin_param=mlp.hidden = (32,)",
]


def train_args(logdir, run_name, *extra) -> list[str]:
    return ["train", f"--logdir={logdir}", f"--run_name={run_name}", *PARAMS, *extra]


def weights(run_dir):
    reader = tf.train.load_checkpoint(
        tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    )
    names = sorted(
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith("optimizer/_trainable_variables/")
    )
    assert names
    return [reader.get_tensor(n) for n in names]


@pytest.fixture(scope="module")
def runs(resumable):
    """The session's resumable run (conftest.py): whole (`full`), and SIGKILLed well past
    its first checkpoint and resumed (`late`)."""
    assert resumable.resumed.returncode == 0, resumable.resumed.stderr
    return resumable.logdir, resumable.killed_at, resumable.resumed.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_resume_reports_where_it_continued(runs):
    _, killed_after, out = runs
    step = int(out.split("resumed at step ")[1].split(")")[0])
    assert step % RESUMABLE_EVERY == 0 and 0 < step <= killed_after


@pytest.mark.slow
@pytest.mark.subprocess
def test_resumed_run_equals_an_uninterrupted_one(runs):
    logdir, _, _ = runs
    for a, b in zip(weights(logdir / "full"), weights(logdir / "late"), strict=True):
        np.testing.assert_array_equal(a, b)
    full, cut = Events(logdir / "full"), Events(logdir / "late")
    for tag in ("lr", "loss/batch", "grad/global_norm", "loss/ma_long"):
        # `scalar` checks one point per step 0, 1, 2, ... (no duplicates, no zig-zag).
        np.testing.assert_array_equal(full.scalar(tag), cut.scalar(tag), err_msg=tag)
        assert len(cut.scalar(tag)) == RESUMABLE_STEPS
    assert len(np.unique(full.scalar("lr"))) > 5  # the controller's state mattered


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code = cli.main(train_args(tmp_path, "other", "--resume"))
    assert code == 2
    assert "it is not an lrresearch run (no config.gin" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "other")) == [".lock", "notes.txt"]


SIGNALS = {"ctrl_c": signal.SIGINT, "sigterm": signal.SIGTERM}


@dataclasses.dataclass
class Interrupted:
    """A run stopped by a signal: exit code, stderr, newest checkpoint and `lr` points
    then; and its `--resume` to 50 batches past the step it stopped at."""

    run_dir: pathlib.Path
    returncode: int
    stderr: str
    checkpoint: str | None
    lr_points: int
    resumed: Finished | None = None


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict[str, Interrupted]:
    """One run per signal in SIGNALS, started together (2 cores), each sent its signal at
    its first progress line, then resumed together."""
    logdir = tmp_path_factory.mktemp("interrupted")
    # A run far too long to finish on its own, so the signal always lands mid-training
    # (a 300-batch run once ended before a busy CI machine delivered it).
    endless = "--gin_param=Trainer.steps = 1000000"
    started = {
        name: start_cli(
            *train_args(logdir, name, endless), stderr=subprocess.PIPE, preexec_fn=default_ctrl_c
        )
        for name in SIGNALS
    }
    out = {}
    for name, process in started.items():
        try:
            for line in process.stdout:
                if line.startswith("step ") and "/1000000" in line:
                    process.send_signal(SIGNALS[name])
                    break
            _, err = process.communicate(timeout=60)
        finally:
            process.kill()
        run_dir = logdir / name
        checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
        lr_points = len(Events(run_dir).scalar("lr")) if process.returncode == 130 else 0
        out[name] = Interrupted(run_dir, process.returncode, err, checkpoint, lr_points)
    resuming = {}
    for name, stopped in out.items():
        if stopped.returncode == 130:
            at = int(stopped.stderr.split("interrupted at step ")[1].split(":")[0])
            extra = ("--resume", f"--gin_param=Trainer.steps = {at + 50}")
            resuming[name] = start_cli(*train_args(logdir, name, *extra), stderr=subprocess.PIPE)
    for name, process in resuming.items():
        out[name].resumed = finish(process)
    return out


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("name", list(SIGNALS))
def test_ctrl_c_saves_a_checkpoint_and_exits_130(interrupted, name):
    stopped = interrupted[name]
    assert stopped.returncode == 130, stopped.stderr
    at = int(stopped.stderr.split("interrupted at step ")[1].split(":")[0])
    assert 0 < at < 1000000
    assert stopped.checkpoint.endswith(f"-{at}")
    assert stopped.lr_points >= at  # flushed up to there
    assert stopped.resumed.returncode == 0, stopped.resumed.stderr
    assert len(Events(stopped.run_dir).scalar("lr")) == at + 50


@pytest.mark.slow
def test_default_run_config_names_its_controller_and_an_old_none_still_resumes(tmp_path, capsys):
    """config.gin records the controller a `Trainer.controller = None` run used; a run
    written before that (config.gin says None) resumes without a false difference, and
    config.gin is rewritten with the raised Trainer.steps."""
    import gin

    from lrresearch.config import parse as config
    from lrresearch.training.trainer import Trainer

    base = ["Trainer.steps_per_loop = 4", "Trainer.eval_every = 0", "mlp.hidden = (8,)"]
    base += ["Trainer.checkpoint_every = 4", "Trainer.histogram_every = 0"]
    saved = tmp_path / "default" / "config.gin"
    for steps, resume in ((4, False), (6, True)):
        config.parse([], [*base, f"Trainer.steps = {steps}"])
        try:
            Trainer().fit(logdir=str(tmp_path), run_name="default", resume=resume)
        finally:
            gin.clear_config()
        if not resume:
            text = saved.read_text()
            assert "Trainer.controller = @GradNormController()\n" in text
            assert "GradNormController.base_lr = 0.1\n" in text
            saved.write_text(text.replace("@GradNormController()", "None"))  # an older run
    out = capsys.readouterr().out
    assert "resumed at step 4" in out
    assert "differ from the run's config.gin:\n  Trainer.steps: 4 -> 6\n  (config.gin" in out
    text = saved.read_text()
    assert "Trainer.controller = @GradNormController()\n" in text
    assert "Trainer.steps = 6\n" in text and "Trainer.steps = 4\n" not in text
    assert text.startswith("# Resumed at step 4 with bindings that differ (before -> after):\n")


def test_the_optimizers_arguments_an_older_config_lacks_are_no_difference():
    """Before issue 22 a short name built its optimizer without gin, so an older
    config.gin has no `SGD.*`: the lines today's config lists for it are no difference
    on resume, unless a binding now sets one of them."""
    import types

    import gin
    import keras

    from lrresearch.config import parse as config
    from lrresearch.training import resume

    saved = "Trainer.optimizer = 'sgd'\nTrainer.steps = 60\n"
    trainer = types.SimpleNamespace(optimizer=keras.optimizers.SGD())
    now = saved.replace("60", "90") + "SGD.momentum = 0.0\nSGD.nesterov = False\n"
    assert resume._differences(saved, now, trainer) == ["Trainer.steps: 60 -> 90"]
    config.parse([], ["SGD.nesterov = True"])
    try:
        now = now.replace("nesterov = False", "nesterov = True")
        assert resume._differences(saved, now, trainer) == [
            "Trainer.steps: 60 -> 90",
            "SGD.*: only now (2 bindings)",
        ]
        # A config.gin that lists them (today's) compares them line by line, as before.
        older = saved + "SGD.momentum = 0.0\nSGD.nesterov = False\n"
        assert resume._differences(older, now, trainer) == [
            "SGD.nesterov: False -> True",
            "Trainer.steps: 60 -> 90",
        ]
    finally:
        gin.clear_config()


def test_a_parameter_added_since_the_run_at_its_default_is_no_difference():
    """A config.gin written before `Trainer.weight_averaging` existed lacks it: today's
    `Trainer.weight_averaging = None` (its default) is no change on resume; any other
    value is, and so is a new parameter of a configurable the run did not bind."""
    from lrresearch.training import resume
    from lrresearch.training.trainer import Trainer  # noqa: F401  (registers Trainer)

    saved = "Trainer.steps = 60\nTrainer.polynomial_averaging = None\n"
    now = saved + "Trainer.weight_averaging = None\n"
    assert resume._differences(saved, now) == []
    ema = saved + "Trainer.weight_averaging = 'ema'\n"
    assert resume._differences(saved, ema) == ["Trainer.weight_averaging: (unset) -> 'ema'"]
    assert resume._differences(saved, now + "EMA.decay = 0.999\n") == [
        "EMA.*: only now (1 bindings)"
    ]


CACHED_INPUT = """
import gin
import keras
import tensorflow as tf


@gin.configurable
def cached_line(cache_file="cache/line"):
    x = tf.random.stateless_uniform((20000, 4), seed=(1, 2))
    return tf.data.Dataset.from_tensor_slices((x, tf.reduce_sum(x, 1, keepdims=True))).cache(
        cache_file
    )


@gin.configurable
def linear(input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(1)(inputs))
"""
CACHED_RUN = [
    "import cachepkg", "Trainer.dataset = @cached_line", "Trainer.model = @linear",
    "Trainer.loss = 'mse'", "Trainer.metrics = []", "Trainer.steps = 1000000",
    "Trainer.steps_per_loop = 10", "Trainer.log_every = 10", "Trainer.checkpoint_every = 20",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_cache_lock_left_by_a_killed_run_is_removed_on_resume(tmp_path, monkeypatch, capsys):
    # A pipeline that fills a .cache(file) over its first epoch (312 batches), killed in it.
    (tmp_path / "cachepkg.py").write_text(CACHED_INPUT)
    (tmp_path / "cache").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    process = start_cli(
        "train", "--logdir=runs", "--run_name=c", *(f"--gin_param={p}" for p in CACHED_RUN),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    kill_at_step(process, 30)
    stale = [p for p in (tmp_path / "cache").glob("line_*.lockfile")
             if not p.with_suffix(".index").exists()]  # fmt: skip
    assert len(stale) == 1  # the shard being written when the process died
    monkeypatch.chdir(tmp_path)
    params = [f"--gin_param={p}" for p in [*CACHED_RUN, "Trainer.steps = 50"]]
    code = cli.main(["train", "--logdir=runs", "--run_name=c", "--resume", *params])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (
        f"resume: removed {os.path.join('cache', stale[0].name)}, the tf.data cache lock" in out.out
    )
    assert len(Events(tmp_path / "runs" / "c").scalar("lr")) == 50


def test_a_cache_lock_not_left_by_the_runs_own_process_is_kept_and_explained(tmp_path):
    lock = tmp_path / "line_0.lockfile"
    lock.write_text("Created at: 1000")  # before the run's previous process started
    assert tf_data_cache.remove_stale_locks((str(tmp_path / "line"),), 2000.0) == []
    assert lock.exists()
    error = tf.errors.AlreadyExistsError(
        None, None, "There appears to be a concurrent caching iterator running - cache "
        f"lockfile already exists ('{lock}'). If you are sure no other running TF ..."
    )  # fmt: skip
    message = tf_data_cache.explain_lock_error(error, "runs/c")
    assert f"{lock} exists" in message and "delete the lock" in message
    assert "--resume --run_name c --logdir runs" in message and len(message.splitlines()) <= 4
