"""The `lrresearch train` command line, run for real in subprocesses.

Each subprocess pays TensorFlow's import (~5 s), so the independent ones are started
together once per module and the tests only look at their results.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import subprocess
import sys
import types

import gin
import numpy as np
import pytest

from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from lrresearch.controllers import Controller
from lrresearch.logs import quiet
from tests.support import (
    BATCH_TAGS,
    GIN_DIR,
    REPO,
    Finished,
    finish,
    read_events,
    snapshot,
    start_cli,
)

TIMEOUT = 120  # seconds per CLI process (a good 20-step run takes ~10 s)


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return start_cli("train", *args, env=env, stderr=subprocess.PIPE)


def write(path: pathlib.Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, Finished]:
    """Four CLI processes, run concurrently: a good run, a run-name clash with an existing
    run directory, an unknown configurable and a bad value in gin files."""
    tmp = tmp_path_factory.mktemp("cli")
    logdir = tmp / "runs"
    # An existing run (made by hand, so the clash can run alongside the rest).
    existing = logdir / "existing"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "config.gin").write_text("Trainer.steps = 5\n")
    (existing / "events.out.tfevents.123.host").write_bytes(b"\x00events")
    (existing / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    typo_configurable = write(
        tmp / "typo_configurable.gin",
        [
            "# A misspelt controller name on line 3.",
            "Trainer.steps = 20",
            "Trainer.controller = @GradNormControler()",
        ],
    )
    bad_value = write(
        tmp / "bad_value.gin",
        [
            "# Layered after a strategy file; the bad value is on line 4.",
            "Trainer.steps = 20",
            "",
            "Trainer.batch_size = -3",
        ],
    )
    files = {
        "typo_configurable": typo_configurable,
        "bad_value": bad_value,
        "logdir": str(logdir),
        "existing": str(existing),
        "before_clash": snapshot(existing),
    }
    started = {
        "ok": start(
            [
                "--gin_file=strategies/grad_norm.gin",
                "--gin_param=Trainer.steps=20",
                "--gin_param=mlp.hidden=(16,)",
                f"--logdir={logdir}",
                "--run_name=first",
            ]
        ),
        "clash": start(
            [
                "--gin_param=Trainer.steps=20",
                "--gin_param=mlp.hidden=(16,)",
                f"--logdir={logdir}",
                "--run_name=existing",
            ]
        ),
        "typo_configurable": start([f"--gin_file={typo_configurable}", f"--logdir={logdir}"]),
        "bad_value": start(
            [
                "--gin_file=strategies/grad_norm.gin",
                f"--gin_file={bad_value}",
                f"--logdir={logdir}",
            ]
        ),
    }
    results = {name: finish(s, TIMEOUT) for name, s in started.items()}
    results["files"] = files  # type: ignore[assignment]
    return results


def describe(result: Finished) -> str:
    return result.describe()


def error_text(result: Finished) -> str:
    """The CLI's own error message (stderr minus TensorFlow's start-up chatter)."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    m = re.search(r"^lrresearch: error: .*", result.stderr, re.M | re.S)
    assert m, describe(result)
    return m.group(0)


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_prints_run_dir_first_and_summary_last(cli_runs):
    result = cli_runs["ok"]
    assert result.returncode == 0, describe(result)
    run_dir = os.path.join(cli_runs["files"]["logdir"], "first")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert run_dir in lines[0], describe(result)
    assert lines[-1].startswith("done:"), describe(result)
    assert sum(line.startswith("done:") for line in lines) == 1
    assert "20 steps" in lines[-1] and run_dir in lines[-1]
    assert "lrresearch: error" not in result.stderr, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    # The run itself: the strategy file was used, every batch logged.
    with open(os.path.join(run_dir, "config.gin")) as f:
        assert "Trainer.controller = @GradNormController()" in f.read()
    events = read_events(run_dir)
    for tag in BATCH_TAGS:
        np.testing.assert_array_equal(events.steps(tag), np.arange(20), err_msg=tag)
    assert os.listdir(os.path.join(run_dir, "checkpoints"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_existing_run_name_exits_2_and_leaves_it_untouched(cli_runs):
    result = cli_runs["clash"]
    message = error_text(result)
    existing = cli_runs["files"]["existing"]
    assert existing in message and "exists" in message
    assert "done:" not in result.stdout
    assert snapshot(existing) == cli_runs["files"]["before_clash"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_unknown_configurable_names_file_line_and_suggests(cli_runs):
    message = error_text(cli_runs["typo_configurable"])
    path = cli_runs["files"]["typo_configurable"]
    assert path in message
    assert re.search(rf"{re.escape(path)}\D+3\b", message), message  # file, then line 3
    assert "GradNormControler" in message
    assert "Did you mean 'GradNormController'" in message


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_value_names_binding_and_where_it_was_bound(cli_runs):
    message = error_text(cli_runs["bad_value"])
    assert "Trainer.batch_size" in message
    assert "-3" in message
    assert f"{cli_runs['files']['bad_value']}:4" in message


@pytest.mark.slow
@pytest.mark.subprocess
def test_no_run_directory_left_by_failed_configs(cli_runs):
    # Only the successful run made a directory; config errors fail before.
    assert sorted(os.listdir(cli_runs["files"]["logdir"])) == ["existing", "first"]


# -- in-process: cheap error paths of the same entry point --------------------------------------


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    gin.clear_config()
    yield
    gin.clear_config()


def test_missing_gin_file_is_a_clear_error(in_repo, capsys, tmp_path):
    code = cli.main(["train", "--gin_file=strategies/gradnorm.gin", f"--logdir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no such file" in err and "strategies/gradnorm.gin" in err
    assert "'strategies/grad_norm.gin'" in err  # the close name is suggested
    assert os.listdir(tmp_path) == []


def test_unknown_parameter_names_file_line_and_suggests(in_repo, capsys, tmp_path):
    path = write(tmp_path / "typo_parameter.gin", ["Trainer.batch_size = 32", "Trainer.stepz = 20"])
    code = cli.main(["train", f"--gin_file={path}", f"--logdir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lrresearch: error:")
    assert path in err and re.search(rf"{re.escape(path)}\D+2\b", err), err
    assert "stepz" in err and "'steps'" in err
    code = cli.main(["train", "--gin_param=Trainer.stepz = 3", f"--logdir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "stepz" in err and "'steps'" in err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_loss_trend_without_max_lr_names_the_parameter(in_repo, capsys, tmp_path):
    code = cli.main(
        [
            "train",
            "--gin_file=strategies/loss_trend.gin",
            "--gin_param=LossTrendController.max_lr = None",
            f"--logdir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "LossTrendController.max_lr" in err
    code = cli.main(
        ["train", "--gin_param=Trainer.controller = @LossTrendController()", f"--logdir={tmp_path}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "LossTrendController.max_lr" in err
    assert os.listdir(tmp_path) == []


def test_bad_value_in_gin_param_names_the_flag(in_repo, capsys, tmp_path):
    code = cli.main(["train", "--gin_param=Trainer.steps_per_loop = 0", f"--logdir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Trainer.steps_per_loop" in err and "--gin_param" in err
    assert os.listdir(tmp_path) == []


def test_steps_per_loop_whose_buffers_cannot_fit_is_refused_before_the_run(
    in_repo, capsys, tmp_path
):
    """A call's per-batch log is sized by the batches it can run: with every cadence
    off and a run of 10**12 batches, 10**11 per call would buffer terabytes (the old
    code grew until the kernel killed it): refused, naming the binding and the fix,
    before any run directory exists."""
    params = ["Trainer.steps = 1000000000000", "Trainer.steps_per_loop = 100000000000",
              "Trainer.log_every = 100000000000", "Trainer.histogram_every = 0",
              "Trainer.eval_every = 0", "Trainer.checkpoint_every = 0"]  # fmt: skip
    code = cli.main(["train", *(f"--gin_param={p}" for p in params), f"--logdir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Trainer.steps_per_loop must be at most" in err and "GiB" in err, err
    assert "Lower Trainer.steps_per_loop" in err and "--gin_param" in err
    assert os.listdir(tmp_path) == []


# -- every shipped gin file parses and builds ---------------------------------------------------

GIN_FILES = sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))


def test_gin_files_are_shipped():
    assert {
        "base.gin",
        "strategies/grad_norm.gin",
        "strategies/loss_trend.gin",
        "strategies/cyclical.gin",
    } <= set(GIN_FILES)


def last_binding(path: pathlib.Path, key: str) -> str | None:
    """The value of the last `key = value` line of a gin file, following its includes."""
    value = None
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"include\s+['\"](.+)['\"]", line):
            included = path.parent / m.group(1)
            if not included.exists():
                included = GIN_DIR / m.group(1)
            value = last_binding(included, key) or value
        elif m := re.fullmatch(rf"{re.escape(key)}\s*=\s*(.+)", line):
            value = m.group(1).strip()
    return value


@pytest.mark.slow
@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses_and_builds(name, tmp_path, monkeypatch):
    from lrresearch.training.trainer import Trainer

    path = GIN_DIR / name
    monkeypatch.chdir(tmp_path)  # includes must not depend on the working directory
    gin.clear_config()
    try:
        config.parse([str(path)], [])
        trainer = Trainer()
        trainer.build()  # data, model, optimizer; no training
    finally:
        gin.clear_config()
    assert isinstance(trainer.controller, Controller)
    controller = last_binding(path, "Trainer.controller")
    if controller is not None:
        assert controller == f"@{type(trainer.controller).__name__}()"
    steps = last_binding(path, "Trainer.steps")
    if steps is not None:
        assert trainer.steps == int(steps)
    model = last_binding(path, "Trainer.model")
    if model is not None:
        assert trainer.model.name == model.lstrip("@")
    if trainer.data is not None:  # in-memory class-labelled data (a tf.data input has none)
        assert trainer.model.output_shape[-1] == trainer.data.num_classes


# -- a quiet start ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_experiment_run_starts_without_error_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "lrresearch", "train"),
            "--gin_file=experiments/grad_norm_adamw_clipped.gin",
            *("--gin_param=Trainer.steps=20", f"--logdir={tmp_path}", "--quiet"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr and "cuInit" not in result.stderr, result.stderr
    assert "Path not found" not in result.stderr and "absl" not in result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("done: 20 steps")


def test_startup_filter_drops_noise_and_keeps_real_errors(monkeypatch):
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795982483.095363    3560 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1795982483.095747    3560 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.",
        "E0000 00:00:1795982484.747613    3560 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    ]
    news = [
        "E0000 00:00:1795982484.1    3560 oom.cc:1] could not allocate 2.0GiB",
        "Python says something else",
    ]
    assert quiet.startup_noise_removed("\n".join([*noise, *news]) + "\n") == (
        "\n".join(news) + "\n"
    )
    # With a driver installed, a failing cuInit is news; without one (TF said so before
    # the capture began, when TF was imported earlier), it is not.
    monkeypatch.setattr(quiet, "_no_cuda_driver", lambda: False)
    assert quiet.startup_noise_removed(noise[3] + "\n") == noise[3] + "\n"
    monkeypatch.setattr(quiet, "_no_cuda_driver", lambda: True)
    assert quiet.startup_noise_removed(noise[3] + "\n") == ""


@pytest.mark.parametrize("user_level", [None, "0"])
def test_startup_filter_only_applies_without_the_users_own_log_level(
    user_level, monkeypatch, capfd
):
    monkeypatch.setattr(quiet, "USER_TF_LOG_LEVEL", user_level)
    line = b"I0000 00:00:1795982483.095363    3560 port.cc:153] oneDNN custom operations\n"
    with quiet.tensorflow_start():
        os.write(2, line + b"E0000 00:00:1.2    3560 x.cc:9] real trouble\n")
    err = capfd.readouterr().err
    assert "real trouble" in err
    assert ("oneDNN" in err) == (user_level is not None)


def test_retracing_filter_drops_only_the_per_trainer_loop_warning(caplog):
    import tensorflow as tf

    from lrresearch.training import compiled_loop

    def fake_trainer():  # just what compiled_loop.build reads
        return types.SimpleNamespace(
            jit_compile=False,
            step=tf.Variable(0, dtype=tf.int64),
            inputs=types.SimpleNamespace(
                train=types.SimpleNamespace(next=lambda: (tf.ones([2]), tf.ones([2])))
            ),
            train_step=lambda x, y, periodic, log: (tf.reduce_sum(x * y), {}, {}),
        )

    def make_other():
        return tf.function(lambda x: x + 1)

    dropper = quiet.DropLoopRetracingWarning()
    tf.get_logger().addFilter(dropper)
    try:
        with caplog.at_level(logging.WARNING, logger="tensorflow"):
            for _ in range(8):  # as `profile` does: a Trainer per controller
                loop = compiled_loop.build(fake_trainer(), frozenset(), 2, log=False)
                loop(tf.constant(2, tf.int64))
                make_other()(tf.constant(1))
    finally:
        tf.get_logger().removeFilter(dropper)
    warnings = [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]
    assert warnings and all("build.<locals>.loop" not in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("command", "flag", "name"),
    [
        ("train", "--run_name", "two\nlines"),
        ("train", "--run_name", "tab\there"),
        ("lr-find", "--run_name", "a/b"),
        ("sweep", "--sweep_name", ".."),
    ],
)
def test_a_run_name_that_is_not_one_plain_directory_name_exits_2(
    capsys, tmp_path, command, flag, name
):
    assert cli.main([command, f"--logdir={tmp_path}", flag, name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lrresearch: error: `{flag}` must be one plain directory name")
    assert repr(name) in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []
