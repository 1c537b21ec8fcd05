"""`lrresearch sweep`: parsing, the cross product, failures that do not stop a sweep."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time

import gin
import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.studies import sweep
from lrresearch.studies.sweep import parse_sweep, split_values
from tests.support import REPO, Events, default_ctrl_c


def test_split_values_respects_brackets_and_quotes():
    assert split_values("[0, 1,2]") == ["0", "1", "2"]
    assert split_values("[@A(), @B(x=1, y=(2, 3)), 'a,b', \"[c]\"]") == [
        "@A()",
        "@B(x=1, y=(2, 3))",
        "'a,b'",
        '"[c]"',
    ]
    with pytest.raises(ValueError, match="brackets"):
        split_values("0, 1")
    with pytest.raises(ValueError, match="empty"):
        split_values("[]")


def test_parse_sweep():
    assert parse_sweep("Trainer.seed=[0, 1]") == ("Trainer.seed", ["0", "1"])
    assert parse_sweep("scope/mlp.hidden = [(8,), (16, 16)]") == (
        "scope/mlp.hidden",
        ["(8,)", "(16, 16)"],
    )
    with pytest.raises(ValueError, match=r"Configurable\.param"):
        parse_sweep("[0, 1]")


@pytest.mark.slow
def test_sweep_runs_the_cross_product_and_reports_failures(tmp_path, capsys):
    argv = [
        "sweep",
        f"--logdir={tmp_path}",
        "--sweep_name=s",
        "--quiet",
        "--gin_param=Trainer.steps = 20",
        "--gin_param=Trainer.steps_per_loop = 10",
        "--gin_param=mlp.hidden = (8,)",
        "--sweep=Trainer.controller=[@ConstantController(), @LossTrendController()]",
        "--sweep=Trainer.seed=[0, 1]",
    ]
    assert cli.main(argv) == 1  # LossTrendController without max_lr fails, twice
    out = capsys.readouterr().out
    assert "2/4 runs ok" in out and out.count("FAILED") == 2
    assert "LossTrendController.max_lr" in out
    manifest = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["bindings"] for p in manifest["points"]] == [
        {"Trainer.controller": c, "Trainer.seed": s}
        for c in ("@ConstantController()", "@LossTrendController()")
        for s in ("0", "1")
    ]
    ok = [p["run"] for p in manifest["points"][:2]]
    for run in ok:
        assert (tmp_path / "s" / run / "config.gin").exists()
    # The sweep root holds the HParams experiment and the layout.
    assert list((tmp_path / "s").glob("events.out.tfevents.*"))


def test_sweep_rejects_a_bad_binding_before_running_anything(tmp_path, capsys):
    argv = ["sweep", f"--logdir={tmp_path}", "--sweep=Trainer.seeed=[0, 1]"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "seeed" in err and "seed" in err
    assert list(tmp_path.iterdir()) == []


def hparams_experiment(sweep_dir, intervals: bool = False) -> dict[str, list | tuple]:
    """The HParams experiment of a sweep root: `{hparam: [discrete values]}`, or with
    `intervals`, `(min, max)` for an hparam with an interval domain."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = Events(sweep_dir)
    content = events.acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    found: dict[str, list | tuple] = {}
    for info in experiment.hparam_infos:
        if intervals and info.HasField("domain_interval"):
            found[info.name] = (info.domain_interval.min_value, info.domain_interval.max_value)
        else:
            found[info.name] = [
                v.number_value or v.string_value for v in info.domain_discrete.values
            ]
    return found


@pytest.mark.slow
def test_random_sweep_records_every_drawn_value_in_sweep_json_and_hparams(tmp_path, capsys):
    argv = [
        *("sweep", f"--logdir={tmp_path}", "--sweep_name=r", "--quiet"),
        *("--gin_param=Trainer.steps = 10", "--gin_param=Trainer.steps_per_loop = 10"),
        *("--gin_param=Trainer.eval_every = 0", "--gin_param=mlp.hidden = (8,)"),
        "--gin_param=Trainer.controller = @ConstantController()",
        *("--sweep_random=2", "--seed=7"),
        "--sample=ConstantController.lr=loguniform(1e-3, 1)",
        "--sample=Trainer.batch_size=choice([16, 32])",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "r" / "sweep.json").read_text())
    assert (manifest["sweep_random"], manifest["seed"]) == (2, 7)
    sampled = [p["sampled"] for p in manifest["points"]]
    lrs = [s["ConstantController.lr"] for s in sampled]
    assert len(set(lrs)) == 2 and all(1e-3 <= lr <= 1 for lr in lrs)
    # The same flags draw the same points (drawing is cheap; training them is not).
    _, again = sweep.parse_samples(manifest["samples"], 2, 7)
    assert again == [lrs, [s["Trainer.batch_size"] for s in sampled]]
    for index, (point, drawn) in enumerate(zip(manifest["points"], sampled, strict=True)):
        assert float(point["bindings"]["ConstantController.lr"]) == drawn["ConstantController.lr"]
        lr, batch_size = drawn["ConstantController.lr"], drawn["Trainer.batch_size"]
        assert point["run"] == f"{index:03d}-lr={lr:.3g}-batch_size={batch_size}"
        # The run trained at the drawn LR and batch size, and its HParams say so.
        run = Events(tmp_path / "r" / point["run"])
        assert run.scalar("lr")[0] == pytest.approx(drawn["ConstantController.lr"], rel=1e-6)
        session = run.hparams()
        assert session["ConstantController.lr"] == drawn["ConstantController.lr"]
        assert session["Trainer.batch_size"] == int(drawn["Trainer.batch_size"])
    # The experiment: the continuous draw as its interval, the choice as values drawn.
    experiment = hparams_experiment(tmp_path / "r", intervals=True)
    assert experiment["ConstantController.lr"] == (1e-3, 1.0)
    assert sorted(experiment["Trainer.batch_size"]) == sorted(
        {int(s["Trainer.batch_size"]) for s in sampled}
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_stops_a_sweep_and_sweep_resume_finishes_it(tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    flags = ["--sweep_name=s", "--gin_param=Trainer.steps = 1000000"]
    flags += ["--gin_param=Trainer.steps_per_loop = 10", "--gin_param=mlp.hidden = (8,)"]
    flags += ["--sweep=Trainer.seed=[3, 4]"]
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "lrresearch", "sweep", f"--logdir={tmp_path}", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_ctrl_c,
    )
    try:
        deadline = time.monotonic() + 90
        while not list((sweep_dir / "000-seed=3").glob("events.out.tfevents.*")):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)  # training, with the trainer's stop handler installed
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("lrresearch: error:") == 1, err
    message = err[err.index("lrresearch: error:") :]
    assert message.startswith("lrresearch: error: sweep interrupted: 0 of 2 runs finished")
    assert "not run: 001-seed=4" in message
    assert "| 000-seed=3 | | | | interrupted |" in out
    # The interrupted run saved its checkpoint; the other never started.
    at = int(re.search(r"000-seed=3 stopped at step (\d+), checkpoint saved", message)[1])
    assert tf.train.latest_checkpoint(str(sweep_dir / "000-seed=3" / "checkpoints")).endswith(
        f"-{at}"
    )
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["000-seed=3"]
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["interrupted", "not run"]
    assert hparams_experiment(sweep_dir)["seed"] == [3]  # TensorBoard lists the run started
    # The same sweep again is refused with what `sweep` takes.
    gin.clear_config()
    assert cli.main(["sweep", f"--logdir={tmp_path}", *flags]) == 2
    refusal = capsys.readouterr().err
    assert "choose another --sweep_name" in refusal and "--run_name" not in refusal
    # --resume takes the sweep's own points: another --sweep is refused, nothing run.
    resume = ["sweep", "--resume", "--sweep_name=s", f"--logdir={tmp_path}"]
    assert cli.main([*resume, "--sweep=Trainer.seed=[9]"]) == 2
    assert "its points are fixed" in capsys.readouterr().err
    # The advised command continues the sweep (its runs cut short by a lower Trainer.steps).
    command = shlex.split(message.split("checkpoint) with:\n")[1].splitlines()[0])
    assert command == ["lrresearch", "sweep", "--resume", "--sweep_name", "s",
                       "--logdir", str(tmp_path)]  # fmt: skip
    try:
        code = cli.main([*command[1:], f"--gin_param=Trainer.steps = {at + 10}", "--quiet"])
    finally:
        gin.clear_config()
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["ok", "ok"]
    assert manifest["gin_params"][-1] == f"Trainer.steps = {at + 10}"
    for run in ("000-seed=3", "001-seed=4"):
        assert len(Events(sweep_dir / run).scalar("lr")) == at + 10, run
    assert sorted(hparams_experiment(sweep_dir)["seed"]) == [3, 4]
    # A finished sweep resumed: nothing runs, and it counts as done.
    assert cli.main([*command[1:], "--quiet"]) == 0
    assert "| 001-seed=4 | | | | ok (earlier) |" in capsys.readouterr().out
