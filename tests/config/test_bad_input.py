"""Bad gin files, bindings and flags: exit 2 with one screen naming the place and the fix.

In-process (`cli.main` with capsys): every case fails before TensorFlow trains anything.
"""

from __future__ import annotations

import logging
import os
import pathlib

import gin
import pytest

from lrresearch.cli import commands as cli
from lrresearch.config import parse as config
from tests.support import GIN_DIR, REPO


def write(path: pathlib.Path, *lines: str) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def fail(monkeypatch, capsys, caplog, tmp_path):
    """`fail(*argv)` runs the CLI, checks it refused the input on one screen without
    writing anything, and returns the error message."""
    monkeypatch.chdir(REPO)
    logdir = tmp_path / "runs"

    def run(*argv: str) -> str:
        gin.clear_config()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = cli.main([*argv, f"--logdir={logdir}"])
        gin.clear_config()
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("lrresearch: error: ") and err.count("lrresearch: error") == 1, err
        assert "Traceback" not in err and len(err.splitlines()) <= 6, err
        assert "Path not found" not in caplog.text  # gin's false include-lookup errors
        assert not logdir.exists() or not os.listdir(logdir)
        return err.removeprefix("lrresearch: error: ")

    return run


def test_include_cycle_names_every_include_of_the_cycle(fail, tmp_path):
    a = write(tmp_path / "a.gin", "Trainer.steps = 5", "", "include 'b.gin'")
    b = write(tmp_path / "b.gin", "Trainer.seed = 1", "include 'a.gin'")
    message = fail("train", f"--gin_file={a}")
    assert message.startswith(f"include cycle: {a}:3 includes 'b.gin', {b}:2 includes 'a.gin'")
    itself = write(tmp_path / "self.gin", "include 'self.gin'")
    assert fail("sweep", f"--gin_file={itself}", "--sweep=Trainer.seed=[0]").startswith(
        f"include cycle: {itself}:1 includes 'self.gin'\n"
    )


def test_include_of_a_missing_file_names_the_including_line(fail, tmp_path):
    path = write(tmp_path / "x.gin", "Trainer.steps = 5", "include 'nowhere.gin'")
    message = fail("train", f"--gin_file={path}")
    assert message.startswith(f"{path}:2: include 'nowhere.gin': no such file in ")
    assert str(tmp_path) in message


def test_unclosed_statement_names_the_file_and_the_line_it_starts_on(fail, tmp_path):
    inner = write(tmp_path / "inner.gin", "Trainer.steps = 5", "mlp.hidden = (8,", "")
    outer = write(tmp_path / "outer.gin", "include 'inner.gin'")
    for gin_file in (inner, outer):  # the file at fault is named, included or not
        message = fail("train", f"--gin_file={gin_file}")
        assert message.startswith(f"{inner}:2: this statement is not closed"), message
    message = fail("lr-find", "--gin_param=Trainer.steps = (1")
    assert message.startswith("--gin_param='Trainer.steps = (1': this statement is not closed")


def test_unparseable_value_names_file_or_flag_and_how_to_write_it(fail, tmp_path):
    path = write(tmp_path / "bare.gin", "Trainer.steps = 5", "Trainer.optimizer = adam")
    message = fail("train", f"--gin_file={path}")
    assert message.startswith(f"{path}:2: gin cannot parse the value `adam`")
    assert "('adam')" in message and "@adam()" in message
    message = fail("profile", "--gin_param=Trainer.optimizer=adam")
    assert message.startswith("--gin_param='Trainer.optimizer=adam': gin cannot parse the value")
    assert "ast.Name" not in message
    message = fail("train", "--gin_param=Trainer.steps = ")
    assert message.startswith("--gin_param='Trainer.steps = ': gin cannot parse the value")
    assert "A value is a Python literal" in message
    message = fail("train", "--gin_param=garbage")
    assert message.startswith("--gin_param='garbage': not a binding")
    assert "'Configurable.parameter = value'" in message


def test_unknown_name_in_gin_param_names_the_flag(fail):
    message = fail("train", "--gin_param=Trainer.controller = @GradNormControler()")
    assert message.startswith("--gin_param='Trainer.controller = @GradNormControler()': ")
    assert "Did you mean 'GradNormController'" in message


def test_sweep_value_gin_cannot_parse_names_the_flag_and_the_value(fail):
    message = fail("sweep", "--sweep=Trainer.optimizer=['sgd', adam]")
    assert message.startswith(
        "--sweep=\"Trainer.optimizer=['sgd', adam]\", value 'adam': gin cannot parse the value"
    ), message
    assert "('adam')" in message and "ast.Name" not in message


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("Trainer.seed", "must look like 'Configurable.param=[v1, v2]'"),
        ("Trainer.seed=[]", "the list of values is empty"),
        ("Trainer.seed=[0,,1]", "has an empty value"),
        ("Trainer.seed=1", "the values must be a list in brackets, got '1'"),
    ],
)
def test_malformed_sweep_flag_is_named_with_an_example(fail, spec, says):
    message = fail("sweep", f"--sweep={spec}")
    assert message.startswith(f"--sweep={spec!r}: ") and says in message, message
    if "look like" in says or "brackets" in says or "is empty" in says:
        assert "e.g. --sweep='Trainer.seed=[0, 1, 2]'" in message


def test_npz_file_without_path_says_how_to_bind_it(fail, tmp_path):
    message = fail("train", "--gin_param=Trainer.dataset = @npz_file")
    assert message.startswith(
        "npz_file.path is not set; bind it, e.g. --gin_param='npz_file.path = \"data.npz\"'\n"
    )
    assert "used at: --gin_param='Trainer.dataset = @npz_file'" in message
    path = write(tmp_path / "npz.gin", "# my data", "Trainer.dataset = @npz_file")
    assert f"used at: {path}:2" in fail("train", f"--gin_file={path}")


def test_gin_file_that_is_a_directory_or_not_text_is_named(fail, tmp_path):
    folder = tmp_path / "folder.gin"
    folder.mkdir()
    assert fail("train", f"--gin_file={folder}") == (
        f"--gin_file: {str(folder)!r} is a directory, not a gin file\n"
    )
    binary = tmp_path / "weights.gin"
    binary.write_bytes(b"\x89PNG\x00\xff")
    message = fail("train", f"--gin_file={binary}")
    assert message.startswith(f"--gin_file: {str(binary)!r} is not a gin file (not UTF-8")


def test_include_resolves_next_to_the_file_after_other_parses(monkeypatch, tmp_path):
    # Parsing a shipped experiment first must not make the shipped folder shadow a
    # `base.gin` that sits next to a later file (gin's search paths used to accumulate).
    monkeypatch.chdir(tmp_path)
    try:
        config.parse([str(GIN_DIR / "experiments/imbalanced_loss_trend.gin")], [])
        write(tmp_path / "base.gin", "Trainer.steps = 7")
        config.parse([write(tmp_path / "mine.gin", "include 'base.gin'")], [])
        assert gin.query_parameter("Trainer.steps") == 7
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (None, "no module named 'lab_{kind}'\n  Python looked in the working directory"),
        ("raise RuntimeError('no GPU')", "the module raised RuntimeError: no GPU ({py}:1)"),
        ("def f(:\n    pass", "syntax error in the module: invalid syntax ({py}:1)"),
        ("import not_installed", "it imports 'not_installed', which is not installed ({py}:1)"),
    ],
    ids=["missing", "raises", "syntax", "dependency"],
)
def test_failing_import_names_the_gin_file_line_and_module(
    fail, monkeypatch, tmp_path, request, source, says
):
    kind = request.node.callspec.id
    py = tmp_path / "modules" / f"lab_{kind}.py"
    if source is not None:
        py.parent.mkdir()
        py.write_text(source + "\n")
        monkeypatch.syspath_prepend(str(py.parent))
    path = write(tmp_path / "mine.gin", "Trainer.steps = 5", f"import lab_{kind}")
    message = fail("train", f"--gin_file={path}")
    assert message.startswith(f"{path}:2: import lab_{kind}: {says.format(kind=kind, py=py)}")
    if kind == "missing":
        message = fail("train", f"--gin_param=import lab_{kind}")
        assert message.startswith(f"--gin_param='import lab_{kind}': import lab_{kind}: no module")


def test_moving_average_binding_says_what_to_bind_instead(fail):
    message = fail("train", "--gin_param=MovingAverage.window = 5")
    assert "No configurable matching 'MovingAverage'" in message
    assert "Bind Trainer.loss_ma_short and Trainer.loss_ma_long" in message
    assert "Trainer.loss_ma_kind" in message


def test_a_parameter_callers_always_pass_says_what_to_bind_instead():
    # What gin says once `Trainer` denylists `strategy` (the command passes it).
    error = ValueError("Configurable 'Trainer' has denylisted kwarg 'strategy'.")
    assert "choose it with distribution.strategy" in config.explain(error, "--gin_param=x")


def test_an_unknown_argument_of_an_optimizer_names_the_gin_file_line_and_binding(fail, tmp_path):
    path = write(tmp_path / "bad.gin", "Trainer.steps = 2", "Trainer.optimizer = @Prodigy",
                 "Prodigy.bogus_arg = 1")  # fmt: skip
    message = fail("train", f"--gin_file={path}")
    assert message.startswith(
        f"Prodigy.bogus_arg must be an argument of Prodigy, got a binding at {path}:3: "
        "Prodigy has no parameter 'bogus_arg'"
    )
    assert "Its parameters are: learning_rate, beta_1," in message


def test_a_binding_a_short_name_overrides_names_where_it_is_bound(fail):
    message = fail("train", "--gin_param=Trainer.optimizer = 'momentum'",
                   "--gin_param=SGD.momentum = 0.5")  # fmt: skip
    assert message.startswith("SGD.momentum must not be bound with Trainer.optimizer = ")
    assert "bound at: --gin_param='SGD.momentum = 0.5'" in message


TF_DATA = ["import user_pkg.workload", "Trainer.dataset = @user_pkg.workload.three_targets",
           "Trainer.model = @mlp", "Trainer.loss = 'mse'", "Trainer.steps = 2"]  # fmt: skip


def test_mlp_on_a_tf_data_input_asks_for_num_classes_and_the_binding_works(
    fail, tmp_path, user_code
):
    path = write(tmp_path / "tfdata.gin", *TF_DATA)
    message = fail("train", f"--gin_file={path}")
    assert message.startswith(
        "Trainer.model: mlp() needs the class count (num_classes), which only in-memory "
        "class-labelled data give, not a tf.data input; bind it in gin, e.g. "
        "`mlp.num_classes = 10`"
    )
    # Bound, the model is built: the next problem is its output (2 units, 3 targets).
    message = fail("train", f"--gin_file={path}", "--gin_param=mlp.num_classes = 2")
    assert message.startswith(
        "Trainer.model must output what Trainer.loss takes for these labels: mlp outputs "
        "shape (2,) per example, the labels of three_targets have shape (3,) (float32), and "
        "mean_squared_error cannot take them ("
    )
    assert f"bound at: {path}:3" in message  # Trainer.model = @mlp
