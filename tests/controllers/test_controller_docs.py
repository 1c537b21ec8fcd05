"""Every exported controller documents itself as optax's template asks: an `Examples:`
section whose gin snippet builds the controller and whose `>>>` lines run, and a
`References:` section when it follows a paper, PyTorch or optax."""

from __future__ import annotations

import doctest
import inspect
import re

import gin
import pytest

from lrresearch import controllers
from lrresearch.config import parse as config

EXPORTED = [n for n in controllers.__all__ if n not in ("Controller", "ControllerOutput")]
# The ones that follow a paper, a PyTorch scheduler or an optax schedule.
FOLLOW_A_REFERENCE = {
    "AdaGradNormController",
    "Chain",
    "CosineRestartsController",
    "CyclicController",
    "ExponentialDecayController",
    "InverseSqrtController",
    "InverseTimeDecayController",
    "MultiStepController",
    "NGNController",
    "PiecewiseConstantController",
    "PolynomialDecayController",
    "StepController",
    "HypergradientController",
    "OneCycleController",
    "PlateauController",
    "PolyakController",
    "TimmCosineController",
    "Warmup",
    "WarmupCosineController",
}


def section(name: str, title: str) -> str:
    text = inspect.cleandoc(getattr(controllers, name).__doc__ or "")
    match = re.search(rf"^{title}:\n((?:[ \t]+.*\n?|\n)+)", text, re.MULTILINE)
    return inspect.cleandoc(match.group(1)) if match else ""


def gin_lines(name: str) -> list[str]:
    """The gin bindings of a controller's `Examples:` (comments dropped)."""
    lines = [line.split("#")[0].strip() for line in section(name, "Examples").splitlines()]
    return [line for line in lines if re.match(r"^[\w./]+ = \S", line)]


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_controller_has_examples_and_references_where_it_follows_one(name):
    assert section(name, "Examples"), f"{name} has no Examples: section"
    doc = getattr(controllers, name).__doc__
    if name in FOLLOW_A_REFERENCE or re.search(r"torch\.optim|optax", doc):
        assert section(name, "References"), f"{name} follows a reference but has no References:"


@pytest.mark.parametrize("name", EXPORTED)
def test_the_gin_example_parses_and_builds_the_controller(name):
    lines = gin_lines(name)
    assert lines and lines[0].startswith("Trainer.controller = @"), name
    assert any(line.startswith(f"{name}.") or f"@{name}()" in line for line in lines), name
    try:
        config.parse([], lines)
        built = gin.query_parameter("Trainer.controller").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert isinstance(built, controllers.Controller)


def test_the_python_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(verbose=False)
    ran = 0
    for name in EXPORTED:
        cls = getattr(controllers, name)
        for test in finder.find(cls, name, globs={}):  # each example imports what it uses
            if test.docstring and test.examples and test.name == name:
                ran += len(test.examples)
                runner.run(test)
    assert ran >= 10, ran
    assert runner.failures == 0, "a >>> example in a controller docstring failed (see above)"
