"""The trainer under tf.distribute: MirroredStrategy on 2 logical CPUs and
MultiWorkerMirroredStrategy with 2 local worker processes, each compared with the
single-device run of the same global batch.

The distributed runs are real processes (the logical devices and the multi-worker
runtime must be set up before TensorFlow starts); they are started together by one
module fixture while the single-device reference trains in this process.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.config import parse as config
from lrresearch.training import distribute
from tests.support import (
    BATCH_TAGS,
    REPO,
    Events,
    Finished,
    binding_lines,
    default_ctrl_c,
    finish,
    train,
)

TIMEOUT = 300
STEPS = 60
PARAMS = {
    "Trainer.steps": STEPS,
    "Trainer.steps_per_loop": 10,
    "Trainer.histogram_every": 20,
    "Trainer.grad_norm_every": 1,
    "Trainer.eval_every": 30,
    "Trainer.checkpoint_every": 20,
    "Trainer.optimizer": "momentum",
    "mlp.hidden": (32,),
}
MIRRORED = ['distribution.strategy = "mirrored"', "distribution.logical_cpus = 2"]


def start(command: list[str], tmpdir: pathlib.Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_ctrl_c,
    )


def launcher(logdir: pathlib.Path, run_name: str, params: list[str]) -> list[str]:
    flags = [a for p in params for a in ("--gin_param", p)]
    return [
        sys.executable,
        str(REPO / "tools" / "launch_local_workers.py"),
        "--workers",
        "2",
        "--timeout",
        str(TIMEOUT - 30),
        "--",
        "lrresearch",
        "train",
        "--logdir",
        str(logdir),
        "--run_name",
        run_name,
        *flags,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("distribute")
    params = binding_lines(PARAMS)
    started = {
        "mirrored": start(
            [
                sys.executable,
                "-m",
                "tests.training.mirrored_run",
                str(logdir),
                "mirrored",
                *params,
                *MIRRORED,
            ]
        ),
        "multi_worker": start(launcher(logdir / "mw", "mw", params), logdir / "worker_tmp"),
        "odd_batch": start(
            [
                sys.executable,
                "-m",
                "lrresearch",
                "train",
                "--logdir",
                str(logdir / "odd"),
                *(
                    a
                    for p in [*params, "Trainer.batch_size = 63", *MIRRORED]
                    for a in ("--gin_param", p)
                ),
            ]
        ),
        "no_tf_config": start(
            [
                sys.executable,
                "-m",
                "lrresearch",
                "train",
                "--logdir",
                str(logdir / "no_tf_config"),
                "--gin_param",
                'distribution.strategy = "multi_worker"',
            ]
        ),
    }
    single = train(logdir, params=PARAMS, run_name="single")
    done = {name: finish(proc) for name, proc in started.items()}
    return logdir, single, done


def describe(proc: Finished) -> str:
    return proc.describe()


def mirrored_report(runs) -> dict:
    _, _, done = runs
    proc = done["mirrored"]
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_series(single: Events, other: Events) -> None:
    for tag in BATCH_TAGS:
        a, b = single.scalar(tag), other.scalar(tag)
        assert len(a) == len(b) == STEPS, tag
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-7, err_msg=tag)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_mirrored_matches_single_device(runs):
    _, single, _ = runs
    report = mirrored_report(runs)
    assert report["replicas"] == 2
    header = f"run directory: {runs[0] / 'mirrored'} (mirrored, 2 replicas)"
    assert header in runs[2]["mirrored"].stdout.splitlines()
    assert len(report["devices"]) == 2 and all("CPU" in d for d in report["devices"])
    mirrored = Events(report["run_dir"])
    assert_same_series(single.events, mirrored)
    for tag in ("eval/loss", "eval/accuracy"):
        np.testing.assert_allclose(mirrored.values(tag), single.events.values(tag), rtol=1e-5)
    final = np.load(os.path.join(report["run_dir"], "final_weights.npz"))
    expected = [v.numpy() for v in single.trainer.variables]
    assert len(final.files) == len(expected)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(final[f"arr_{i}"], want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_mirrored_replicas_agree_on_lr_and_weights(runs):
    report = mirrored_report(runs)
    assert len(report["lr_copies"]) == 2
    assert report["lr_copies"][0] == report["lr_copies"][1]
    assert report["lr_copies"][0] == pytest.approx(float(runs[1].events.scalar("lr")[-1]), rel=1e-5)
    assert report["weight_copy_max_diff"] == 0.0
    # In-graph under the strategy too: each compiled loop traced once, no Python ops.
    assert report["tracing_counts"] and set(report["tracing_counts"]) == {1}
    assert report["python_ops"] == []


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_mirrored_dropout_resumes_exactly(runs):
    report = mirrored_report(runs)["random_resume"]
    assert report["warning"] is None
    assert report["lrs"][0] == report["lrs"][1] and report["weight_max_diff"] == 0.0
    # One Dropout stream, [seed, batches drawn], the same on both replicas.
    [(first, second)] = report["state_copies"]
    assert first == second and first[1] == 10


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_mirrored_writes_each_summary_once(runs):
    report = mirrored_report(runs)
    files = glob.glob(os.path.join(report["run_dir"], "events.out.tfevents.*"))
    assert len(files) == 1, files
    events = Events(report["run_dir"])
    for tag in (*BATCH_TAGS, "grad/norm/dense/kernel"):
        np.testing.assert_array_equal(events.steps(tag), np.arange(STEPS), err_msg=tag)
    np.testing.assert_array_equal(events.steps("grad/dense/kernel"), [0, 20, 40])
    np.testing.assert_allclose(
        events.scalar("grad/norm/dense/kernel"),
        runs[1].events.scalar("grad/norm/dense/kernel"),
        rtol=2e-5,
    )
    hparams = events.hparams()
    assert (hparams["distribution"], hparams["replicas"]) == ("mirrored", 2)
    assert runs[1].events.hparams()["replicas"] == 1


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_batch_not_divisible_by_replicas_is_a_clear_error(runs):
    logdir, _, done = runs
    proc = done["odd_batch"]
    assert proc.returncode == 2, describe(proc)
    assert "Trainer.batch_size must be a multiple of the 2 replicas" in proc.stderr
    assert "63" in proc.stderr
    assert not (logdir / "odd").exists() or not any((logdir / "odd").iterdir())


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_multi_worker_without_tf_config_says_how_to_launch(runs):
    logdir, _, done = runs
    proc = done["no_tf_config"]
    assert proc.returncode == 2, describe(proc)
    assert "TF_CONFIG" in proc.stderr and "launch_local_workers.py" in proc.stderr
    assert not (logdir / "no_tf_config").exists()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_multi_worker_chief_writes_the_run(runs):
    logdir, single, done = runs
    proc = done["multi_worker"]
    assert proc.returncode == 0, describe(proc)
    for worker in (0, 1):
        assert re.search(rf"^\[worker-{worker}\] done: {STEPS} steps", proc.stdout, re.M), describe(
            proc
        )
    # The non-chief saved its checkpoints to temporary folders (its TMPDIR here), now
    # deleted, and wrote nothing in the logdir.
    assert "[worker-1] run directory:" in proc.stdout and "no summaries" in proc.stdout
    assert f"[worker-0] run directory: {logdir / 'mw' / 'mw'} (multi_worker, 2 replicas)" in (
        proc.stdout
    )
    assert list((logdir / "worker_tmp").iterdir()) == []
    run_dir = logdir / "mw" / "mw"
    assert sorted(os.listdir(logdir / "mw")) == ["mw"]
    files = glob.glob(str(run_dir / "events.out.tfevents.*"))
    assert len(files) == 1, files
    assert (run_dir / "config.gin").read_text().count("multi_worker") == 1
    chief = Events(run_dir)
    assert_same_series(single.events, chief)
    hparams = chief.hparams()
    assert (hparams["distribution"], hparams["replicas"]) == ("multi_worker", 2)
    np.testing.assert_array_equal(chief.steps("grad/dense/kernel"), [0, 20, 40])
    index = (run_dir / "checkpoints" / "checkpoint").read_text()
    assert [int(n) for n in re.findall(r'all_model_checkpoint_paths: "ckpt-(\d+)"', index)] == [
        20,
        40,
        60,
    ]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_multi_worker_checkpoint_restores_the_single_device_weights(runs):
    """The chief's last checkpoint, restored into a single-device trainer, holds the
    weights, step and controller state of the single-device run."""
    from lrresearch.training.trainer import Trainer

    logdir, single, _ = runs
    gin.clear_config()
    try:
        config.parse([], binding_lines(PARAMS))
        restored = Trainer()
        restored.build()
    finally:
        gin.clear_config()
    path = str(logdir / "mw" / "mw" / "checkpoints" / f"ckpt-{STEPS}")
    restored.checkpoint.restore(path).assert_existing_objects_matched()
    assert int(restored.step.numpy()) == STEPS
    for got, want in zip(restored.variables, single.trainer.variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    for got, want in zip(restored.ma_long.variables, single.trainer.ma_long.variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    assert restored.current_lr() == pytest.approx(single.trainer.current_lr(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_failed_chief_stops_the_other_worker_and_keeps_the_run(runs):
    """Relaunching into the existing run: the chief refuses (runs are never
    overwritten); the launcher stops the waiting worker and exits with the code."""
    logdir, _, done = runs
    assert done["multi_worker"].returncode == 0
    run_dir = logdir / "mw" / "mw"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    proc = finish(start(launcher(logdir / "mw", "mw", binding_lines(PARAMS))))
    assert proc.returncode == 2, describe(proc)
    assert "already exists" in proc.stdout
    assert "stopping the other workers" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
def test_ctrl_c_stops_every_worker_at_one_step_and_resume_continues(tmp_path):
    """Ctrl-C on the launcher: the workers agree on a step, the chief saves its
    checkpoint there, every process exits 130; `--resume` continues from it."""
    params = binding_lines(
        {**PARAMS, "Trainer.steps": 1_000_000, "Trainer.log_every": 20}
    )  # far too long to end on its own
    process = start(launcher(tmp_path, "int", params), tmp_path / "worker_tmp")
    try:
        for line in process.stdout:
            if line.startswith("[worker-0] step "):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    proc = Finished(list(process.args), process.returncode, line + out, err)
    assert proc.returncode == 130, describe(proc)
    steps = {int(n) for n in re.findall(r"interrupted at step (\d+):", proc.stdout)}
    assert len(re.findall(r"interrupted at step", proc.stdout)) == 2, describe(proc)
    assert len(steps) == 1, describe(proc)  # both workers stopped at the same step
    at = steps.pop()
    assert 0 < at < 1_000_000
    run_dir = tmp_path / "int"
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"-{at}")
    assert len(Events(run_dir).scalar("lr")) >= at  # flushed up to there
    assert list((tmp_path / "worker_tmp").iterdir()) == []

    resume = [*launcher(tmp_path, "int", [*params, f"Trainer.steps = {at + 30}"]), "--resume"]
    resumed = finish(start(resume, tmp_path / "worker_tmp"))
    assert resumed.returncode == 0, describe(resumed)
    assert f"(resumed at step {at})" in resumed.stdout
    assert len(Events(run_dir).scalar("lr")) == at + 30  # steps 0..at+29, once each


def test_strategy_name_is_checked_and_located(tmp_path, monkeypatch, capsys):
    from lrresearch.cli import commands as cli

    monkeypatch.chdir(REPO)
    code = cli.main(
        ["train", "--logdir", str(tmp_path), "--gin_param", 'distribution.strategy = "mirror"']
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "distribution.strategy must be one of" in err and "'mirror'" in err
    assert "bound at: --gin_param" in err
    assert not any(tmp_path.iterdir())


def test_logical_cpus_after_tensorflow_started_is_a_clear_error():
    tf.constant(0)  # the runtime is up, as it is in this test process
    gin.clear_config()
    try:
        config.parse([], ["distribution.logical_cpus = 3"])
        with pytest.raises(distribute.DistributionError, match="before building models"):
            distribute.get_strategy()
    finally:
        gin.clear_config()
