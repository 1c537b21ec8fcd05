"""Nothing lost: real kills, a second writer, damaged checkpoints and a full disk all
leave a run that resumes to exactly the uninterrupted one, read by TensorBoard's own
loader (whose Python `EventAccumulator` does not purge tensor events on a restart, so
any point the interrupted process left past its checkpoint would show up twice)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest

from lrresearch.cli import commands as cli
from lrresearch.logs import event_files
from lrresearch.training import run_dir as rundir
from tests.support import (
    RESUMABLE_EVERY,
    RESUMABLE_PARAMS,
    RESUMABLE_STEPS,
    Events,
    raw_lr_steps,
    resumable_args,
    run_cli,
    start_cli,
)

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

# The session's resumable run (`resumable` in conftest.py): trained whole, and killed well
# past its first checkpoint and resumed, once for this module and test_resume.py.
STEPS, EVERY, PARAMS = RESUMABLE_STEPS, RESUMABLE_EVERY, RESUMABLE_PARAMS
TAGS = ("lr", "loss/batch", "grad/global_norm", "loss/ma_long")


def train(logdir, run_name, *extra):
    return run_cli(*resumable_args(logdir, run_name, *extra))


def assert_equals_uninterrupted(run_dir, full):
    cut = Events(run_dir)
    for tag in TAGS:  # `scalar` checks one point per step 0, 1, 2, ...
        np.testing.assert_array_equal(full.scalar(tag), cut.scalar(tag), err_msg=tag)
    assert len(cut.scalar("lr")) == STEPS
    np.testing.assert_array_equal(full.values("eval/accuracy"), cut.values("eval/accuracy"))


@pytest.fixture(scope="module")
def full(resumable):
    return resumable.logdir, resumable.full


def test_kill_well_past_a_checkpoint_resumes_without_duplicated_points(resumable):
    logdir, reference = resumable.logdir, resumable.full
    killed, saved, on_disk = resumable.killed_at, resumable.saved, resumable.on_disk_when_killed
    run_dir = logdir / "late"
    assert killed >= EVERY + 300
    # The setup this test is about: points past the checkpoint reached the disk.
    assert saved < killed and on_disk.max() > saved, (saved, killed, on_disk.max())
    resumed = resumable.resumed
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {saved})" in resumed.stdout
    assert f"events logged after step {saved}" in resumed.stdout
    assert_equals_uninterrupted(run_dir, reference)
    assert sorted(raw_lr_steps(run_dir)) == list(range(STEPS))  # in the files themselves


def test_kill_before_the_first_checkpoint_resume_starts_again(resumable):
    logdir, reference = resumable.logdir, resumable.full
    assert not [name for name in resumable.early_checkpoints if name.endswith(".index")]
    resumed = resumable.early_resumed
    assert resumed.returncode == 0, resumed.stderr
    assert "has no checkpoint (it stopped before its first): starting it from step 0" in (
        resumed.stdout
    )
    assert_equals_uninterrupted(logdir / "early", reference)
    assert len(Events(logdir / "early").text("config")) == 1


def test_a_second_writer_of_a_run_is_refused(full, capsys):
    logdir, _ = full
    run_dir = logdir / "busy"
    first = start_cli(*resumable_args(logdir, "busy", "--gin_param=Trainer.steps = 1000000"))
    try:
        for line in first.stdout:
            if line.startswith("step "):
                break
        code, second = resume_in_process(logdir, "busy", capsys)  # this process: the second
        assert first.poll() is None  # still training: the refusal was the lock's
    finally:
        first.kill()
        first.wait(timeout=30)
    assert code == 2
    assert f"is in use by pid {first.pid}" in second.err
    assert "Traceback" not in second.err
    assert len(event_files.event_files(str(run_dir))) == 1  # the second wrote nothing


def copy_run(source, logdir):
    name = f"copy-{uuid.uuid4().hex[:6]}"
    shutil.copytree(source, logdir / name)
    return logdir / name, name


def resume_in_process(logdir, name, capsys, *extra):
    code = cli.main(["train", f"--logdir={logdir}", f"--run_name={name}", "--resume",
                     *(f"--gin_param={p}" for p in [*PARAMS, *extra])])  # fmt: skip
    return code, capsys.readouterr()


def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact_one(full, capsys):
    logdir, reference = full
    run_dir, name = copy_run(logdir / "full", logdir)
    checkpoints = run_dir / "checkpoints"
    (data,) = glob.glob(f"{checkpoints}/ckpt-{STEPS}.data-*")
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.remove(checkpoints / f"ckpt-{STEPS - EVERY}.index")
    (checkpoints / "checkpoint").write_text("garbage {{{")
    (checkpoints / f"ckpt-{STEPS}_temp").mkdir()  # what a kill during a save leaves
    code, out = resume_in_process(logdir, name, capsys)
    assert code == 0, out.err
    fallback = STEPS - 2 * EVERY
    assert f"ckpt-{STEPS} is damaged (" in out.out
    assert f"ckpt-{STEPS - EVERY} has data but no .index" in out.out
    assert f"resumed at step {fallback})" in out.out
    assert not (checkpoints / f"ckpt-{STEPS}_temp").exists()
    assert glob.glob(f"{checkpoints}/damaged/ckpt-{STEPS}.*")
    assert_equals_uninterrupted(run_dir, reference)


def test_truncated_data_files_fall_back_to_the_newest_intact_checkpoint(full, capsys, tmp_path):
    logdir, reference = full
    # Cut to nothing: found without training (the reader raised IndexError).
    shutil.copytree(logdir / "full" / "checkpoints", tmp_path / "checkpoints")
    (data,) = glob.glob(f"{tmp_path}/checkpoints/ckpt-{STEPS}.data-*")
    os.truncate(data, 0)
    recovery = rundir.recover_checkpoint(str(tmp_path / "checkpoints"))
    assert recovery.step == STEPS - EVERY
    assert recovery.notes == [f"ckpt-{STEPS} is damaged (its data file is cut short): set aside"]
    # Cut in half (a disk that lost the end), resumed: the run is the uninterrupted one.
    run_dir, name = copy_run(logdir / "full", logdir)
    (data,) = glob.glob(f"{run_dir}/checkpoints/ckpt-{STEPS}.data-*")
    os.truncate(data, os.path.getsize(data) // 2)
    code, out = resume_in_process(logdir, name, capsys)
    assert code == 0, out.err
    assert f"ckpt-{STEPS} is damaged (its data file is cut short): set aside" in out.out
    assert glob.glob(f"{run_dir}/checkpoints/damaged/ckpt-{STEPS}.data-*")
    assert f"resumed at step {STEPS - EVERY})" in out.out
    assert_equals_uninterrupted(run_dir, reference)


@pytest.mark.parametrize(
    ("binding", "named"),
    [
        (
            "Trainer.controller = @GradNormController()",
            "Trainer.controller: @LossTrendController() -> @GradNormController()",
        ),
        ("mlp.hidden = (16,)", "mlp.hidden: (32,) -> (16,)"),
    ],
    ids=["controller", "width"],
)
def test_resume_with_another_configuration_names_what_differs(full, capsys, binding, named):
    logdir, _ = full
    run_dir, name = copy_run(logdir / "full", logdir)
    before = sorted(os.listdir(run_dir))
    code, out = resume_in_process(logdir, name, capsys, binding, f"Trainer.steps = {STEPS + 10}")
    assert code == 2
    assert named in out.err and f"Trainer.steps: {STEPS} -> {STEPS + 10}" in out.err
    assert (
        f"own configuration (its config.gin, used when no --gin_file is given): "
        f"lrresearch train --resume --run_name {name} --logdir {logdir}" in out.err
    )
    assert len(out.err.splitlines()) <= 12
    assert sorted(os.listdir(run_dir)) == before


def test_resume_without_gin_file_uses_the_runs_own_config_with_params_on_top(full, capsys):
    logdir, reference = full
    run_dir, name = copy_run(logdir / "full", logdir)
    with open(run_dir / "config.gin", "a") as f:  # as versions before 0e35a6f wrote it
        f.write("Trainer.strategy = None\n")
    # The built-in default is another controller and width: the run's own config is used,
    # with the --gin_param on top (Trainer.steps would extend it the same way).
    code = cli.main(["train", f"--logdir={logdir}", f"--run_name={name}", "--resume",
                     "--gin_param=Trainer.keep_checkpoints = 5"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"resume: configuration: the run's own {run_dir}/config.gin + --gin_param=" in out.out
    assert "(skipped Trainer.strategy, written by an older version" in out.out
    assert "warning: resuming with bindings that differ" in out.out
    assert "Trainer.keep_checkpoints: 3 -> 5" in out.out
    assert f"nothing to train: {run_dir} is complete at step {STEPS}" in out.out
    # config.gin is the configuration the run goes on with; the one it replaced is kept.
    assert "Trainer.keep_checkpoints = 5" in (run_dir / "config.gin").read_text()
    kept = (run_dir / f"config-until-step-{STEPS}.gin").read_text()
    assert "Trainer.keep_checkpoints = 3" in kept and "Trainer.strategy = None" in kept
    code = cli.main(["train", f"--logdir={logdir}", f"--run_name={name}", "--resume"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "warning" not in out.out + out.err and "skipped" not in out.out
    assert_equals_uninterrupted(run_dir, reference)


@pytest.fixture
def small_disk(tmp_path, full):
    """A tmpfs half the size of the full run's directory: the run fills it midway."""
    logdir, _ = full
    size = sum(p.stat().st_size for p in (logdir / "full").rglob("*") if p.is_file())
    mount = tmp_path / "disk"
    mount.mkdir()
    option = f"size={max(size // 2 // 1024, 64)}k"
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", option, "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_screen_and_the_run_resumes(full, small_disk):
    _, reference = full
    result = train(small_disk, "r")
    assert result.returncode == 1, result.stderr
    error = result.stderr[result.stderr.index("lrresearch: error:") :]
    assert "no space left on the disk of" in error and "Traceback" not in result.stderr
    assert "--resume --run_name r" in error and len(error.splitlines()) <= 4
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = train(small_disk, "r", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_equals_uninterrupted(small_disk / "r", reference)


def test_resuming_a_finished_run_says_there_is_nothing_to_train(full, capsys):
    logdir, reference = full
    run_dir, name = copy_run(logdir / "full", logdir)
    code, out = resume_in_process(logdir, name, capsys)
    assert code == 0, out.err
    assert f"done: nothing to train: {run_dir} is complete at step {STEPS}" in out.out
    assert_equals_uninterrupted(run_dir, reference)
