"""The shipped gin files, found by name from any folder (`lrresearch/config/files.py`):
`--gin_file=strategies/loss_trend.gin`, `include 'base.gin'` in a user's own file,
`--gin_search_path`, the old `gin/...` spelling, the error for a missing file, and
`lrresearch list configs`. Every test runs from an empty temporary folder."""

from __future__ import annotations

import fnmatch
import json
import pathlib
import re

import gin
import pytest

from lrresearch.cli import commands as cli
from lrresearch.config import files
from lrresearch.config import parse as config
from lrresearch.studies import sweep
from tests.support import REPO


@pytest.fixture
def elsewhere(monkeypatch, tmp_path):
    """An empty working directory outside the checkout; gin cleared before and after."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    gin.clear_config()
    yield cwd
    gin.clear_config()


def write(path: pathlib.Path, *lines: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def controller() -> str:
    return str(gin.query_parameter("Trainer.controller"))


def test_a_shipped_file_is_found_by_name_from_any_folder(elsewhere):
    for name in ("strategies/loss_trend.gin", "strategies/loss_trend"):
        assert config.parse([name], []) == [str(files.SHIPPED / "strategies/loss_trend.gin")]
        assert controller() == "@LossTrendController()"
    config.parse(["experiments/grad_norm_adamw_clipped.gin"], [])  # includes shipped files
    assert controller() == "@GradNormController()"
    assert gin.query_parameter("Trainer.clip_norm") == 1.0
    config.parse([], ["include 'strategies/dog.gin'"])  # a --gin_param's include too
    assert controller() == "@DoGController()"


def test_a_user_file_in_any_folder_includes_shipped_files_and_its_neighbours(elsewhere, tmp_path):
    write(tmp_path / "mine" / "local.gin", "GradNormController.slope = 0.25")
    mine = write(
        tmp_path / "mine" / "exp.gin",
        "include 'base.gin'",
        "include 'strategies/grad_norm.gin'",
        "include 'local.gin'",  # next to this file, as gin did before
        "GradNormController.base_lr = 0.2",
    )
    config.parse([mine], [])
    assert controller() == "@GradNormController()"
    assert gin.query_parameter("GradNormController.base_lr") == 0.2
    assert gin.query_parameter("GradNormController.slope") == 0.25
    assert gin.query_parameter("Trainer.steps") == 2000  # from the shipped base.gin
    write(tmp_path / "mine" / "local.gin", "GradNormController.slop = 0.25")
    with pytest.raises(config.ConfigError) as e:
        config.parse([mine], [])
    assert f"In file \"{mine}\", line 3\n    include 'local.gin'\n" in str(e.value)  # as written


def test_search_path_comes_after_the_working_directory_and_before_the_shipped_files(
    elsewhere, tmp_path, capsys
):
    ours = tmp_path / "ours"
    write(ours / "strategies" / "loss_trend.gin", "Trainer.controller = @ConstantController()")
    user = write(tmp_path / "user.gin", "include 'strategies/loss_trend.gin'")
    for gin_file in ("strategies/loss_trend.gin", user):  # --gin_file and include alike
        config.parse([gin_file], [], search_path=[str(ours)])
        assert controller() == "@ConstantController()", gin_file
        config.parse([gin_file], [])
        assert controller() == "@LossTrendController()", gin_file
    write(elsewhere / "strategies" / "loss_trend.gin", "Trainer.controller = @PolyakController()")
    config.parse(["strategies/loss_trend.gin"], [], search_path=[str(ours)])
    assert controller() == "@PolyakController()"  # the user's own file wins
    # ... and the command says which file it used, since a shipped one has that name;
    # so it does for an include, a shipped file's too (gin looks in the working
    # directory first). The user's `strategies/` folder (importable: gin's package
    # reader would crash on it) does not stop a shipped include it lacks.
    write(elsewhere / "base.gin", "Trainer.seed = 7")
    cli._note_shadowed(["strategies/loss_trend.gin", "experiments/iris_logreg.gin"], [str(ours)])
    notes = capsys.readouterr().err.splitlines()
    shipped = files.SHIPPED / "experiments/iris_logreg.gin"
    assert notes == [
        "note: --gin_file=strategies/loss_trend.gin is strategies/loss_trend.gin, not the "
        f"shipped {files.SHIPPED / 'strategies/loss_trend.gin'}",
        f"note: {shipped}:6: include 'base.gin' is base.gin, not the shipped "
        f"{files.SHIPPED / 'base.gin'}",
    ]
    config.parse(["experiments/iris_logreg.gin"], [])
    assert gin.query_parameter("Trainer.seed") == 7  # gin's rule, now said out loud
    # A sweep looks its files up in its search path too (`sweep.json` records it).
    write(ours / "mine.gin", "include 'strategies/loss_trend.gin'")
    axes = sweep.check_axes(["mine.gin"], [], ["Trainer.seed=[0]"], search_path=[str(ours)])
    assert [name for name, _ in axes] == ["Trainer.seed"]


@pytest.mark.slow
def test_a_sweep_resumes_from_another_folder_with_its_search_path_and_old_spellings(
    elsewhere, tmp_path, monkeypatch
):
    write(tmp_path / "ours" / "mine.gin", "include 'strategies/constant.gin'", "mlp.hidden = (8,)")
    quick = ["--gin_param=Trainer.steps = 2", "--gin_param=Trainer.eval_every = 0"]
    argv = ["sweep", f"--logdir={tmp_path}", "--sweep_name=s", "--quiet", "--gin_file=mine.gin",
            "--gin_search_path=../ours", "--sweep=Trainer.seed=[0]", *quick]  # fmt: skip
    (tmp_path / "there").mkdir()
    monkeypatch.chdir(tmp_path / "there")  # --gin_search_path is relative to here
    assert cli.main(argv) == 0
    manifest_path = tmp_path / "s" / "sweep.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["gin_search_paths"] == [str(tmp_path / "ours")]  # absolute
    resume = ["sweep", "--resume", f"--logdir={tmp_path}", "--sweep_name=s", "--quiet"]
    monkeypatch.chdir(elsewhere)  # mine.gin is found through the recorded search path
    assert cli.main(resume) == 0
    # A sweep.json written before the move names the checkout's gin/ folder.
    manifest.update(gin_files=["gin/strategies/constant.gin"], gin_search_paths=[])
    manifest_path.write_text(json.dumps(manifest))
    assert cli.main(resume) == 0


def test_the_old_gin_folder_spelling_still_names_the_shipped_file(elsewhere, tmp_path):
    # As from a checkout before the configs moved (README commands, a sweep.json).
    for old in ("gin/strategies/grad_norm.gin", "/old/checkout/gin/strategies/grad_norm.gin"):
        assert config.parse([old], []) == [str(files.SHIPPED / "strategies/grad_norm.gin")]
    user = write(tmp_path / "old.gin", "include 'gin/base.gin'", "include 'gin/strategies/dog.gin'")
    config.parse([user], [])
    assert controller() == "@DoGController()"


def test_a_missing_file_names_the_folders_searched_and_the_closest_shipped_name(
    elsewhere, tmp_path
):
    ours = tmp_path / "ours"
    ours.mkdir()
    with pytest.raises(config.ConfigError) as e:
        config.parse(["strategies/gradnorm.gin"], [], search_path=[str(ours)])
    message = str(e.value)
    assert message.startswith("--gin_file: no such file 'strategies/gradnorm.gin'; searched ")
    for folder in (str(elsewhere), str(ours), f"{files.SHIPPED} (shipped)"):
        assert folder in message
    assert "Did you mean 'strategies/grad_norm.gin'" in message
    assert "lrresearch list configs" in message
    user = write(tmp_path / "user.gin", "include 'strategies/gradnorm.gin'")
    with pytest.raises(config.ConfigError) as e:
        config.parse([user], [])
    assert str(e.value).startswith(f"{user}:1: include 'strategies/gradnorm.gin': no such file")
    assert "'strategies/grad_norm.gin'" in str(e.value)


def test_list_configs_names_every_shipped_file_with_its_question_or_first_comment(
    elsewhere, capsys
):
    assert cli.main(["list", "configs"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    names = files.shipped_names()
    assert len(names) >= 30 and out.startswith(f"configs ({len(names)}): --gin_file=NAME")
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ") and
              not line.startswith("    ")]  # fmt: skip
    assert listed == names
    for name in names:
        text = (files.SHIPPED / name).read_text()
        if name.startswith("experiments/"):
            assert text.startswith("# Question: "), f"{name} asks no question"
            first = text.splitlines()[0].removeprefix("# ").partition("?")
            assert "".join(first[:2]) in flat, name  # the question, up to its "?"
            assert files.comment_summary(files.SHIPPED / name).endswith("?"), name
        else:
            first = text.splitlines()[0].removeprefix("# ").rstrip(":")  # before a formula
            assert first.split(". ")[0] in flat, name
    assert "Seed strategy 2: multiply the LR by 0.95" in flat


def test_every_command_with_gin_file_takes_gin_search_path():
    parser = cli.build_parser()
    for command in ("train", "profile", "lr-find", "sweep"):
        args = parser.parse_args([command, "--gin_search_path=a", "--gin_search_path=b"])
        assert args.gin_search_path == ["a", "b"], command


def test_the_package_data_patterns_cover_every_shipped_file():
    # setuptools puts only .py files in a wheel unless package data says otherwise;
    # tools/check_wheel.py (CI) installs the wheel and trains each file.
    text = (REPO / "pyproject.toml").read_text()
    listed = re.search(r'^"lrresearch\.config" = \[(.*)\]$', text, re.M).group(1)
    patterns = re.findall(r'"([^"]+)"', listed)
    assert patterns
    root = files.SHIPPED.parent
    for name in files.shipped_names():
        relative = (files.SHIPPED / name).relative_to(root).as_posix()
        assert any(fnmatch.fnmatch(relative, p) and p.count("/") == relative.count("/")
                   for p in patterns), relative  # fmt: skip
