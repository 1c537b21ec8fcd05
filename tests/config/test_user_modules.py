"""The researcher's own module, imported by a gin file's `import` line.

`tests/config/user_code/user_pkg` is importable here because the `user_code` fixture puts
its folder on `sys.path`; the working-directory cases write their module into a temporary
folder instead.
"""

from __future__ import annotations

import os
import sys

import gin
import keras
import pytest

from lrresearch.config import parse as config


@pytest.fixture(autouse=True)
def clean_config(user_code):
    gin.clear_config()
    yield
    gin.clear_config()


def write(path, *lines: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_experiment() -> float:
    keras.utils.set_random_seed(0)
    return gin.get_configurable("user_pkg.workload.experiment")()


def test_operative_config_keeps_the_import_and_reproduces_the_bindings(tmp_path):
    gin_file = write(
        tmp_path / "mine.gin",
        "import user_pkg.workload",
        "experiment.model = @tiny_regressor",
        "tiny_regressor.width = 3",
        "experiment.loss = @scaled_squared_error()",
        "scaled_squared_error.scale = 0.5",
        "experiment.data = @noisy_line()",
        "noisy_line.examples = 8",
    )
    config.parse([gin_file], [])
    loss = run_experiment()
    operative = gin.operative_config_str()
    assert operative.startswith("import user_pkg.workload\n")
    assert "tiny_regressor.width = 3" in operative and "noisy_line.noise = 0.1" in operative

    # The run's config.gin, parsed on its own in a fresh config, is the same run.
    saved = write(tmp_path / "run" / "config.gin", operative)
    gin.clear_config()
    config.parse([saved], [])
    assert run_experiment() == loss
    assert gin.operative_config_str() == operative
    assert gin.query_parameter("scaled_squared_error.scale") == 0.5


def test_module_in_the_working_directory_imports_without_flags(monkeypatch, tmp_path):
    write(
        tmp_path / "project" / "wd_workload.py",
        "import gin",
        "@gin.configurable",
        "def wd_width(width=1):",
        "    return width",
    )
    monkeypatch.chdir(tmp_path / "project")
    path_before = list(sys.path)
    gin_file = write(tmp_path / "configs" / "wd.gin", "import wd_workload", "wd_width.width = 5")
    config.parse([gin_file], [])
    assert gin.get_configurable("wd_width")() == 5
    assert sys.path == path_before  # searched while parsing, not left behind
    # A typo of the user's own name is suggested like a built-in one.
    with pytest.raises(config.ConfigError, match="Did you mean 'wd_width'"):
        config.parse([gin_file], ["wd_widht.width = 2"])


def test_module_next_to_the_gin_file_is_not_searched_and_the_error_says_so(monkeypatch, tmp_path):
    gin_file = write(tmp_path / "elsewhere" / "x.gin", "Trainer.steps = 5", "import beside_gin")
    write(tmp_path / "elsewhere" / "beside_gin.py", "X = 1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError) as error:
        config.parse([gin_file], [])
    message = str(error.value)
    assert message.startswith(f"{gin_file}:2: import beside_gin: no module named 'beside_gin'\n")
    assert f"working directory ({tmp_path})" in message
    assert f"beside_gin is next to the gin file: run from {os.path.dirname(gin_file)}" in message
