"""`open_run`, the one way `train`, `lr-find`, `profile` and `sweep` open a run
directory: `config.gin` written atomically, an existing name refused untouched, the
lock released and the writer closed on the way out, errors included."""

from __future__ import annotations

import os

import gin
import pytest

from lrresearch.cli import commands as cli
from lrresearch.studies import profile as profiling
from lrresearch.training import outer_loop
from lrresearch.training.open_run import open_run
from lrresearch.training.run_dir import LOCK_FILE, RunDirExistsError, RunLock

SMALL = ["--gin_param=mlp.hidden = (8,)", "--gin_param=Trainer.steps_per_loop = 10", "--quiet"]
COMMANDS = {
    "train": ["train", "--run_name=r", "--gin_param=Trainer.steps = 10", *SMALL],
    "lr-find": ["lr-find", "--run_name=r", "--num_steps=20", "--end_lr=100", *SMALL],
    "sweep": ["sweep", "--sweep_name=r", "--sweep=Trainer.seed=[0]", *SMALL[:2],
              "--gin_param=Trainer.steps = 10", "--quiet"],
    "profile": ["profile", "--run_name=r", "--controllers=ConstantController", *SMALL],
}  # fmt: skip


@pytest.fixture
def replaced(monkeypatch) -> list[str]:
    """The targets of every `os.replace` (the last step of an atomic write)."""
    targets: list[str] = []
    real = os.replace

    def replace(source, target, *args, **kwargs):
        targets.append(os.fspath(target))
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return targets


def assert_unlocked(run_dir) -> None:
    """The run's lock is free: this process can take it (and gives it back)."""
    with RunLock(str(run_dir)):
        pass


def leftovers(folder) -> list[str]:
    return [n for _, _, names in os.walk(folder) for n in names if n.endswith(".tmp")]


@pytest.fixture
def failing_profile(monkeypatch):
    """`profile` failing once its run directory is open (profiling itself is tested in
    test_profiling.py; here only how the directory is opened and left)."""

    def fail(*args, **kwargs):
        raise RuntimeError("profiling failed")

    monkeypatch.setattr(profiling, "_profile_variants", fail)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_writes_config_gin_atomically_and_unlocks(
    command, tmp_path, replaced, failing_profile
):
    argv = [*COMMANDS[command], f"--logdir={tmp_path}"]
    if command == "profile":  # failing inside `open_run`: the lock is released all the same
        with pytest.raises(RuntimeError, match="profiling failed"):
            cli.main(argv)
    else:  # lr-find's 20-batch ramp may find no descent (2); its directory is written
        assert cli.main(argv) == (2 if command == "lr-find" else 0)
    gin.clear_config()
    run = tmp_path / "r"
    if command == "sweep":  # the sweep's root has none: each point's run has its own
        configs = list(run.glob("*/config.gin"))
        assert configs and not (run / "config.gin").exists()
    else:
        configs = [run / "config.gin"]
    for config in configs:
        assert str(config) in replaced, (command, replaced)
        assert config.read_text().strip()
    assert not leftovers(run)
    assert_unlocked(run)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_existing_run_untouched(command, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mine.txt").write_text("keep")
    assert cli.main([*COMMANDS[command], f"--logdir={tmp_path}"]) == 2
    gin.clear_config()
    err = capsys.readouterr().err
    flag = "--sweep_name" if command == "sweep" else "--run_name"
    assert "already exists and is never overwritten" in err and f"another {flag}" in err, err
    assert os.listdir(tmp_path / "r") == ["mine.txt"]


def test_open_run_opens_the_writer_on_first_use_and_closes_before_unlocking(tmp_path):
    with pytest.raises(KeyError), open_run(str(tmp_path), "run", "x", "a = 1\n") as run:
        assert (tmp_path / "run" / "config.gin").read_text() == "a = 1\n"
        assert not list((tmp_path / "run").glob("events.*"))  # not opened yet
        with pytest.raises(RunDirExistsError, match="in use"):
            RunLock(run.path).acquire()
        run.writer.flush()
        raise KeyError("inside the run")
    assert run._writer is None and list((tmp_path / "run").glob("events.*"))
    assert_unlocked(tmp_path / "run")
    refused = pytest.raises(RunDirExistsError, match="never overwritten")
    with refused, open_run(str(tmp_path), "run", "x", "b = 2\n"):
        pass
    assert (tmp_path / "run" / "config.gin").read_text() == "a = 1\n"
    with open_run(str(tmp_path), "run", "x", resume=True) as again:
        assert not again.created
    assert (tmp_path / "run" / LOCK_FILE).exists()


def test_train_releases_the_lock_when_the_loop_fails(tmp_path, monkeypatch, capsys):
    def fail(self):
        raise RuntimeError("the loop failed")

    monkeypatch.setattr(outer_loop._Loop, "run", fail)
    with pytest.raises(RuntimeError, match="the loop failed"):
        cli.main([*COMMANDS["train"], f"--logdir={tmp_path}"])
    gin.clear_config()
    assert (tmp_path / "r" / "config.gin").exists()
    assert_unlocked(tmp_path / "r")


def test_the_run_errors_old_spelling_still_resolves_with_a_warning():
    """`training/trainer.py` re-exports nothing; a user's `from lrresearch.trainer import
    RunDirExistsError` (before 0.2) still works through `moved.MOVED_NAMES`."""
    import lrresearch.training.trainer as trainer_module

    assert not hasattr(trainer_module, "RunDirExistsError")
    home = r"lrresearch\.trainer\.RunDirExistsError moved to lrresearch\.training\.run_dir"
    with pytest.warns(DeprecationWarning, match=home):
        from lrresearch.trainer import RunDirExistsError as OldSpelling
    assert OldSpelling is RunDirExistsError
