"""`lrresearch sweep --method=NAME=SOURCE`: whole methods as one axis, axes scoped to one."""

from __future__ import annotations

import json
import shutil

import gin
import numpy as np
import pytest

from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from lrresearch.studies import methods, sampling, sweep
from tests.support import Events

BASE = [
    "--gin_param=Trainer.steps = 20",
    "--gin_param=Trainer.steps_per_loop = 10",
    "--gin_param=Trainer.eval_every = 10",
    "--gin_param=mlp.hidden = (8,)",
]
CONST = "const=Trainer.controller = @ConstantController(); ConstantController.lr = 0.5"
GRAD_NORM = "gn=strategies/grad_norm.gin; GradNormController.slope = 0.002"


def test_split_parts_keeps_semicolons_inside_quotes_and_brackets():
    source = "a.gin; X.y = 'p;q'; Z.w = [1, (2, 3)];  @V(); W.s = \"r;s\";"
    assert methods.split_parts(source) == [
        "a.gin",
        "X.y = 'p;q'",
        "Z.w = [1, (2, 3)]",
        "@V()",
        'W.s = "r;s"',
    ]
    assert methods.split_parts(" ; ") == []


def test_parse_method_sorts_files_from_bindings_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rule.gin").write_text("ConstantController.lr = 0.3\n")
    spec = "mine=my_rule.gin; strategies/grad_norm.gin; GradNormController.slope = 0.5"
    method = methods.parse_method(spec)
    assert method == methods.Method(
        "mine",
        ("my_rule.gin", "strategies/grad_norm.gin"),
        ("GradNormController.slope = 0.5",),
        spec,
    )
    assert method.layer().flag == f"--method={spec!r}"
    # A value may hold '=' and ';' in quotes; import and include lines are bindings.
    method = methods.parse_method("v1.2-b=import os ; X.y = 'a=b;c'")
    assert (method.name, method.gin_files) == ("v1.2-b", ())
    assert method.gin_params == ("import os", "X.y = 'a=b;c'")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("strategies/constant.gin", "must look like NAME=SOURCE"),
        ("1st=strategies/constant.gin", "must look like NAME=SOURCE"),
        ("a b=strategies/constant.gin", "must look like NAME=SOURCE"),
        ("empty= ; ", "no gin file or binding after empty="),
        ("x=Trainer.steps", "neither a gin file"),
        ("x=strategies/no_such.gin", "no such file 'strategies/no_such.gin'; searched"),
    ],
)
def test_parse_method_errors_name_the_flag(spec, expected):
    with pytest.raises(config.ConfigError, match=r"^--method=") as error:
        methods.parse_method(spec)
    assert expected in str(error.value) and repr(spec) in str(error.value)


def test_a_missing_file_error_lists_the_folders_searched(tmp_path):
    with pytest.raises(config.ConfigError) as error:
        methods.parse_method("x=mine.gin", [str(tmp_path)])
    assert "the working directory" in str(error.value) and str(tmp_path) in str(error.value)
    assert "(shipped)" in str(error.value)


def test_parse_methods_refuses_a_name_given_twice():
    with pytest.raises(config.ConfigError, match="'a' is given twice"):
        methods.parse_methods(["a=X.y = 1", "b=X.y = 2", "a=X.y = 3"])


def test_split_scope_reads_a_prefix_only_before_the_first_equals():
    assert methods.split_scope("cos:W.base_lr=[1, 2]") == ("cos", "W.base_lr=[1, 2]")
    assert methods.split_scope("W.base_lr=[1, 2]") == (None, "W.base_lr=[1, 2]")
    assert methods.split_scope("X.s=['a:b']") == (None, "X.s=['a:b']")
    assert methods.split_scope("m:X.s=['a:b']") == ("m", "X.s=['a:b']")
    assert methods.split_scope("m:scope/X.s=[1]") == ("m", "scope/X.s=[1]")


def test_spaces_give_each_method_the_common_axes_and_its_own_in_flag_order():
    a, b = methods.parse_methods(["a=X.y = 1", "b=X.y = 2"])
    axes = {"--sweep": ["a:P.q=[1]", "S.seed=[0, 1]", "b:R.s=[2]"], "--sample": ["b:L.r=u(0, 1)"]}
    spaces = methods.spaces([a, b], axes)
    assert [(s.method, dict(s.axes)) for s in spaces] == [
        (a, {"--sweep": ["P.q=[1]", "S.seed=[0, 1]"], "--sample": []}),
        (b, {"--sweep": ["S.seed=[0, 1]", "R.s=[2]"], "--sample": ["L.r=u(0, 1)"]}),
    ]
    assert [s.layers() for s in spaces] == [(a.layer(),), (b.layer(),)]
    # Without --method, one space holds every axis and adds nothing to the config.
    (only,) = methods.spaces([], {"--sweep": ["S.seed=[0]"]})
    assert (only.method, only.name, only.layers()) == (None, "", ())


def test_a_prefix_naming_no_method_is_an_error_naming_the_flag_and_the_methods():
    known = methods.parse_methods(["cosine=X.y = 1", "adam=X.y = 2"])
    with pytest.raises(config.ConfigError) as error:
        methods.spaces(known, {"--sample": ["cosin:W.lr=loguniform(1e-3, 1)"]})
    message = str(error.value)
    assert message.startswith("--sample='cosin:W.lr=loguniform(1e-3, 1)': 'cosin' names no")
    assert "the methods are cosine, adam" in message
    with pytest.raises(config.ConfigError, match=r"none \(no --method given\)"):
        methods.spaces([], {"--sweep": ["cosine:W.lr=[1]"]})


def test_plan_sweep_draws_per_method_with_common_samples_paired():
    flags = {
        "gin_files": [],
        "gin_params": [],
        "sweeps": ["Trainer.seed=[0, 1]"],
        "methods": [CONST, GRAD_NORM, "third=Trainer.controller = @ConstantController()"],
        "samples": [
            "const:ConstantController.lr=loguniform(1e-3, 1)",
            "Trainer.batch_size=choice([16, 32])",
        ],
        "sweep_random": 2,
        "seed": 3,
    }
    points, samples = sweep.plan_sweep(flags)
    gin.clear_config()
    assert [p.method for p in points] == ["const"] * 4 + ["gn"] * 4 + ["third"] * 4
    assert [p.index for p in points] == list(range(12))
    assert points[0].run_name.startswith("000-const-seed=0-lr=")
    assert points[4].run_name.startswith("004-gn-seed=0-batch_size=")

    # The common sample draws the same values for every method (a paired comparison).
    def sizes(method: str) -> list:
        return [p.sampled["Trainer.batch_size"] for p in points if p.method == method]

    assert sizes("const") == sizes("gn")
    assert all("ConstantController.lr" not in p.bindings for p in points if p.method != "const")
    assert [s.name for s in samples].count("Trainer.batch_size") == 3
    assert points[0].hparams()["method"] == "const"


def test_a_binding_sampled_by_two_methods_spans_both_intervals_in_hparams():
    specs = ["a:X.lr=loguniform(1e-3, 1e-2)", "b:X.lr=loguniform(1e-2, 1e-1)", "Y.k=uniform(0, 1)"]
    specs += ["a:Z.n=intuniform(1, 4)", "b:Z.n=uniform(0, 1)", "a:C.c=choice([1, 2])"]
    found = sampling.domains([sampling.parse_sample(methods.split_scope(s)[1]) for s in specs])
    assert found == {
        "X.lr": sampling.Distribution("loguniform", 1e-3, 1e-1),
        "Y.k": sampling.Distribution("uniform", 0, 1),
        "C.c": sampling.Distribution("choice", choices=("1", "2")),
    }  # Z.n's kinds differ: its values drawn are listed instead


def test_a_gin_param_that_a_method_binds_again_is_noted():
    params = ["Trainer.steps = 20", "mlp.hidden = (8,)", "Trainer.seed = 3"]
    # The experiment includes base.gin: every default again, over the --gin_params.
    experiment, own = methods.parse_methods(
        ["x=experiments/grad_norm_adamw_clipped.gin", f"{GRAD_NORM}; Trainer.seed = 4"]
    )
    notes = methods.overridden([], params, [experiment, own])
    assert notes[0].startswith(
        f"{experiment.flag} sets Trainer.steps = 2000 over the --gin_param's 20 (a method"
    )
    assert [note.split(" sets ")[1].split(" over")[0] for note in notes] == [
        "Trainer.steps = 2000",
        "mlp.hidden = (128,)",
        "Trainer.seed = 0",
        "Trainer.seed = 4",
    ]
    assert methods.overridden([], params, methods.parse_methods([CONST, GRAD_NORM])) == []


def test_sweep_refusals_name_the_method_and_write_nothing(tmp_path, capsys):
    def refused(*flags: str) -> str:
        argv = ["sweep", f"--logdir={tmp_path}", "--sweep_name=s", *BASE, *flags]
        try:
            assert cli.main(argv) == 2
        finally:
            gin.clear_config()
        assert not (tmp_path / "s").exists()
        return capsys.readouterr().err

    err = refused(f"--method={CONST}", "--method=const=strategies/constant.gin")
    assert "the method 'const' is given twice" in err
    err = refused(f"--method={CONST}", "--method=gn=strategies/grad_norms.gin")
    assert "--method='gn=strategies/grad_norms.gin': no such file" in err
    assert "strategies/grad_norm.gin" in err  # the closest shipped name
    err = refused(f"--method={CONST}", "--method=bad=Trainer.stepz = 3")
    assert "--method='bad=Trainer.stepz = 3', binding 'Trainer.stepz = 3'" in err
    assert "steps" in err  # the suggestion
    err = refused(f"--method={CONST}", "--sweep=gm:GradNormController.base_lr=[0.1]")
    assert "'gm' names no --method; the methods are const" in err
    # An unprefixed axis is checked under every method's config, named in the error.
    err = refused(f"--method={CONST}", "--sweep=ConstantController.lrr=[0.1]")
    assert "lrr" in err and f"(an axis of --method={CONST!r}, checked under its" in err
    sample = "--sample=const:ConstantController.lr=uniform(1, 0)"
    err = refused(f"--method={CONST}", "--sweep_random=2", sample)
    assert "uniform needs low < high" in err and f"--method={CONST!r}" in err


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory):
    """Two methods, each with its own LR axis, times two seeds: 4 runs of 20 batches."""
    logdir = tmp_path_factory.mktemp("methods")
    argv = [
        *("sweep", f"--logdir={logdir}", "--sweep_name=m", "--quiet", *BASE),
        *(f"--method={CONST}", f"--method={GRAD_NORM}"),
        "--sweep=gn:GradNormController.base_lr=[0.2]",
        "--sweep=Trainer.seed=[0, 1]",
        "--sweep=const:ConstantController.lr=[0.03]",
    ]
    try:
        assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    return logdir / "m"


RUNS = ["000-const-seed=0-lr=0.03", "001-const-seed=1-lr=0.03",
        "002-gn-base_lr=0.2-seed=0", "003-gn-base_lr=0.2-seed=1"]  # fmt: skip


@pytest.mark.slow
def test_each_method_runs_its_own_axes_with_its_own_config(method_sweep):
    sweep_dir = method_sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == RUNS
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["methods"] == [CONST, GRAD_NORM]
    assert [(p["run"], p["method"], p["status"]) for p in manifest["points"]] == [
        (run, run.split("-")[1], "ok") for run in RUNS
    ]
    for run in RUNS:
        operative = (sweep_dir / run / "config.gin").read_text()
        if "-const-" in run:
            assert "ConstantController.lr = 0.03" in operative
            assert "GradNormController" not in operative
        else:
            assert "GradNormController.base_lr = 0.2" in operative
            assert "GradNormController.slope = 0.002" in operative  # the method's binding
            assert "ConstantController" not in operative


@pytest.mark.slow
def test_each_run_trained_at_its_methods_lr(method_sweep):
    sweep_dir = method_sweep
    for run in RUNS:
        events = Events(sweep_dir / run)
        lr, norm = events.scalar("lr"), events.scalar("grad/global_norm")
        assert len(lr) == 20
        if "-const-" in run:  # the axis value over the method's own 0.5
            np.testing.assert_allclose(lr, 0.03, rtol=1e-6)
        else:  # grad_norm.gin's rule with the method's slope and the axis's base_lr
            expected = np.where(norm < 1e-3, 0.11, np.maximum(0.01, 0.2 - 0.002 * norm))
            np.testing.assert_allclose(lr, expected, rtol=1e-5)
        assert events.hparams()["method"] == run.split("-")[1]


@pytest.mark.slow
def test_the_hparams_experiment_lists_the_method(method_sweep):
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep_dir = method_sweep
    content = Events(sweep_dir).acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    infos = {info.name: info for info in experiment.hparam_infos}
    assert [v.string_value for v in infos["method"].domain_discrete.values] == ["const", "gn"]
    assert {"ConstantController.lr", "GradNormController.base_lr", "Trainer.seed"} <= set(infos)


@pytest.mark.slow
def test_sweep_resume_rebuilds_a_points_method_from_sweep_json(method_sweep, tmp_path, capsys):
    sweep_dir = method_sweep
    copy = tmp_path / "m"
    shutil.copytree(sweep_dir, copy)
    manifest = json.loads((copy / "sweep.json").read_text())
    manifest["points"][3]["status"] = "not run"  # as if the sweep stopped before it
    (copy / "sweep.json").write_text(json.dumps(manifest))
    shutil.rmtree(copy / RUNS[3])
    resume = ["sweep", "--resume", "--sweep_name=m", f"--logdir={tmp_path}", "--quiet"]
    try:
        assert cli.main([*resume, f"--method={CONST}"]) == 2  # the methods are fixed
        assert "its points are fixed" in capsys.readouterr().err
        assert cli.main(resume) == 0, capsys.readouterr().err
    finally:
        gin.clear_config()
    assert "| 000-const-seed=0-lr=0.03 | | | | ok (earlier) |" in capsys.readouterr().out
    operative = (copy / RUNS[3] / "config.gin").read_text()
    assert "GradNormController.slope = 0.002" in operative
    assert "ConstantController" not in operative
    np.testing.assert_allclose(
        Events(copy / RUNS[3]).scalar("lr"), Events(sweep_dir / RUNS[3]).scalar("lr"), rtol=1e-6
    )
