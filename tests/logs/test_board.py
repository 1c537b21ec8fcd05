"""`lrresearch board`, a real TensorBoard behind it: every batch of a run longer than
TensorBoard's default 1,000 points per tag is served through its HTTP API, the Custom
Scalars layout shows the LR alone first, and Ctrl-C stops TensorBoard and its data
server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.logs import board
from tests.support import REPO, default_ctrl_c, free_port, http_get, train

STEPS = 1500  # > 1,000: TensorBoard's default would serve 1,000 of them


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("board")
    params = {
        "Trainer.steps": STEPS,
        "Trainer.steps_per_loop": 500,
        "Trainer.histogram_every": 0,
        "Trainer.eval_every": STEPS,
        "mlp.hidden": (8,),
    }
    return logdir, train(logdir, params=params, run_name="long")


def start_board(*flags: str) -> subprocess.Popen:
    """`lrresearch board FLAGS...` in a subprocess that takes Ctrl-C, as from a shell."""
    # As from a user's shell: a TF_CPP_MIN_LOG_LEVEL set by `quiet` in this process
    # (another test imported lrresearch.cli.commands) would read as the user's and unfilter.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.Popen(
        [sys.executable, "-m", "lrresearch", "board", *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_ctrl_c,
    )


@contextlib.contextmanager
def serving(run: str, *flags: str):
    """`lrresearch board FLAGS... --port P` running until it serves `run`'s `lr`;
    yields (port, process), SIGKILLed after."""
    port = free_port()
    process = start_board(*flags, "--port", str(port))
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if "lr" in http_get(port, "/data/plugin/scalars/tags").get(run, {}):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"lrresearch board {flags} did not serve {run} within 90 s")
            time.sleep(0.3)
        yield port, process
    finally:
        # Ctrl-C, as a user stops it: a SIGKILL would reach `lrresearch board` only,
        # not TensorBoard in its session of its own.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def served(long_run):
    """`lrresearch board --logdir LOGDIR --port P` (TensorBoard's spelling) running;
    yields (port, process)."""
    logdir, _ = long_run
    with serving("long", "--logdir", str(logdir)) as served:
        yield served


def lr_steps(
    port: int, deadline_seconds: float = 30, run: str = "long", count: int = STEPS
) -> list[int]:
    """The steps of the served `lr` points, once TensorBoard has loaded all of them
    (the data server loads a file in passes; bounded wait)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        steps = [p[1] for p in http_get(port, f"/data/plugin/scalars/scalars?run={run}&tag=lr")]
        if len(steps) >= count or time.monotonic() > deadline:
            return steps
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.server
def test_board_serves_every_lr_point_of_a_run_longer_than_1000_batches(served):
    port, _ = served
    assert lr_steps(port) == list(range(STEPS))
    custom = http_get(port, "/data/plugin/custom_scalars/scalars?run=long&tag=%5Elr%24")
    assert [p[1] for p in custom["tag_to_events"]["lr"]] == list(range(STEPS))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.server
def test_custom_scalars_layout_shows_the_lr_alone_first(served):
    port, _ = served
    layout = http_get(port, "/data/plugin/custom_scalars/layout")
    first = layout["category"][0]["chart"][0]
    assert first == {"title": "LR", "multiline": {"tag": ["^lr$"]}}
    charts = [c for cat in layout["category"] for c in cat["chart"]]
    assert sum("^lr$" in c["multiline"]["tag"] for c in charts) == 1, charts


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.server
def test_ctrl_c_stops_tensorboard_and_its_data_server(served):
    port, process = served
    lr_steps(port)  # fully loaded, so the data server is up
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert f"http://127.0.0.1:{port}/#custom_scalars&_smoothingWeight=0" in out
    assert f"--samples_per_plugin=scalars={board.SCALARS_BOUND}" in out
    assert "cuInit" not in err and "oneDNN" not in err, err
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing left in TensorBoard's process group


@pytest.mark.slow
def test_the_last_line_of_a_run_says_how_to_view_it(long_run):
    logdir, run = long_run
    line = run.result.summary_line()
    assert line.startswith(f"done: {STEPS} steps in ")
    assert line.endswith(f"-> {run.run_dir}; view: lrresearch board {logdir}")


def test_scalars_bound_covers_the_longest_run_under_the_logdirs(tmp_path):
    (tmp_path / "a" / "long").mkdir(parents=True)
    (tmp_path / "a" / "long" / "config.gin").write_text("Trainer.steps = 5000000\n")
    (tmp_path / "b").mkdir()
    assert board.samples_per_plugin([str(tmp_path / "b")]) == (
        f"scalars={board.SCALARS_BOUND},histograms={board.HISTOGRAMS_BOUND}"
    )
    assert board.samples_per_plugin([str(tmp_path / "b"), str(tmp_path / "a")]).startswith(
        "scalars=5000000,"
    )


def test_several_logdirs_become_one_named_logdir_spec(tmp_path):
    runs, other = tmp_path / "x" / "runs", tmp_path / "y" / "runs"
    command = board.tensorboard_command([str(runs), str(other)], 6006, "127.0.0.1")
    spec = command[command.index("--logdir_spec") + 1]
    assert spec == f"runs:{runs},runs_2:{other}"
    with pytest.raises(ValueError, match="comma"):
        board.tensorboard_command(["a,b", "c"], 6006, "127.0.0.1")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.server
def test_board_takes_tensorboards_logdir_spec(tmp_path):
    logdir = tmp_path / "runs"
    with tf.summary.create_file_writer(str(logdir / "tiny")).as_default():
        for step in range(3):
            tf.summary.scalar("lr", 0.1, step=step)
    tf.summary.flush()
    with serving("named/tiny", "--logdir_spec", f"named:{logdir}") as (port, process):
        assert lr_steps(port, run="named/tiny", count=3) == [0, 1, 2]
        process.send_signal(signal.SIGINT)  # stops TensorBoard, in a session of its own
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert f"--logdir_spec named:{logdir} " in out


def test_board_directories_from_logdir_and_logdir_spec_must_not_conflict(capsys):
    assert board.resolve_logdirs([], [], None) == (["runs"], None)
    assert board.resolve_logdirs(["a", "b"], [], None) == (["a", "b"], None)
    assert board.resolve_logdirs([], ["a"], None) == (["a"], None)
    assert board.resolve_logdirs(["a"], ["a"], None) == (["a"], None)
    assert board.resolve_logdirs([], [], "x:a,/b") == (["a", "/b"], "x:a,/b")
    for argv, says in [
        (["a", "--logdir", "b"], "LOGDIR a and --logdir b"),
        (["--logdir", "a", "--logdir_spec", "x:b"], "give it alone"),
        (["--logdir_spec", "x:a,y:"], "entry 'y:' has no directory"),
        (["--logdir_spec", ":a"], "entry ':a' has no name"),
    ]:
        assert cli.main(["board", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.subprocess
def test_ctrl_c_while_board_starts_exits_130_with_one_line():
    process = start_board("--logdir", "no-such-dir-yet", "--port", str(free_port()))
    time.sleep(1.0)  # TensorFlow's import alone takes longer
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "interrupted (Ctrl-C" in err
