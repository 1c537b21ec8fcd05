"""A CLI a newcomer can explore: every command's `--help` shows every flag's default
and ends with examples that work; `lrresearch list` names what a gin file can name."""

from __future__ import annotations

import argparse
import os
import re
import shlex

import gin
import pytest

from lrresearch.cli import commands as cli
from lrresearch.cli import docgen, listing
from lrresearch.config import files
from lrresearch.config import parse as config
from lrresearch.config import references as gin_references
from lrresearch.studies import profile as profiling
from lrresearch.studies import sweep
from tests.support import REPO


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    # argparse has no public way to list a parser's subcommands.
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def examples(command: argparse.ArgumentParser) -> list[list[str]]:
    """The `lrresearch ...` lines of a command's epilog, continuations joined, as argv."""
    text = re.sub(r"\\\n\s*", " ", command.epilog or "")
    return [
        shlex.split(line, comments=True)
        for line in text.splitlines()
        if line.strip().startswith("lrresearch ")
    ]


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_flag_shows_its_default_or_is_required_or_a_switch(name):
    command = commands()[name]
    formatter = command._get_formatter()
    for action in command._actions:
        if not action.option_strings or action.nargs == 0 or action.required:
            continue  # positionals, switches (off unless given), required flags
        shown = " ".join(formatter._format_action(action).split())
        assert "default" in shown, f"lrresearch {name} {action.option_strings[0]}: {shown}"
    assert "(default: " in command.format_help()


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_commands_examples_parse_and_their_gin_bindings_are_valid(name, monkeypatch):
    monkeypatch.chdir(REPO)
    command = commands()[name]
    assert command.epilog and command.epilog.startswith("examples:"), name
    found = examples(command)
    assert found, f"lrresearch {name} --help has no example"
    for argv in found:
        assert argv[0] == "lrresearch", argv
        args = cli.build_parser().parse_args(argv[1:])  # exits (SystemExit) on a bad flag
        name = args.command
        gin_files, gin_params = getattr(args, "gin_file", []), getattr(args, "gin_param", [])
        try:
            config.parse(gin_files, gin_params)
            if name == "sweep" and not args.resume:  # a resumed sweep has its own flags
                flags = {"gin_files": gin_files, "gin_params": gin_params, "sweeps": args.sweep}
                flags.update(samples=args.sample, sweep_random=args.sweep_random, seed=args.seed)
                sweep.plan_sweep({**flags, "methods": args.method})  # every method's axes
            if name == "profile" and args.controllers:
                for controller in args.controllers.split(","):
                    reference = gin_references.expand_config(controller, "--controllers")
                    profiling.make_controller(reference)
            if name == "list":
                what = [args.what] if isinstance(args.what, str) else args.what
                assert set(what) <= {*listing.GROUPS, "all"}
            if name == "lr-find":
                config.parse_binding(f"{args.binding} = 0.1", "--binding")
        finally:
            gin.clear_config()
        for path in gin_files:
            assert os.path.isfile(files.resolve(path).path), path


def exported_controllers() -> list[str]:
    from lrresearch import controllers

    return [n for n in controllers.__all__ if n not in ("Controller", "ControllerOutput")]


def test_list_names_every_exported_controller_with_its_one_line_rule():
    from lrresearch import controllers

    text = listing.render()
    flat = " ".join(text.split())
    for name in exported_controllers():
        assert re.search(rf"^  {name}\(", text, re.MULTILINE), name
        rule = docgen.first_sentence(getattr(controllers, name).__doc__)
        assert rule and " ".join(rule.split()) in flat, name


def test_list_prints_groups_in_a_stable_order_with_their_gin_spelling(capsys):
    assert cli.main(["list", "wrappers", "controllers"]) == 0
    out = capsys.readouterr().out
    assert out.index("wrappers (") < out.index("controllers (")
    assert "Trainer.controller = @Name()" in out
    assert "  Warmup(controller=required, warmup_steps=100" in out
    whole = listing.render()
    titles = [line.split(" (")[0] for line in whole.splitlines() if line and line[0] != " "]
    assert titles == list(listing.GROUPS)
    assert whole == listing.render()  # stable
    for group in listing.GROUPS:
        gins = [e.gin for e in listing.entries(group)]
        assert gins and len(set(gins)) == len(gins), group
    assert "'momentum'" in whole and "keras.optimizers.SGD(learning_rate=lr, momentum=0.9)" in whole
    assert "  digits(eval_fraction=0.2, seed=0)" in whole
    assert "  mlp(hidden=(128,), activation='relu')" in whole  # input_shape is passed, not bound


def test_list_shows_every_builtin_dataset_model_and_metric_of_the_registry():
    text = listing.render()
    flat = " ".join(text.split())
    found = {
        selector: obj
        for selector, obj in config.configurables().items()
        if selector.startswith(listing.BUILTIN_MODULES)
    }
    names = {selector.rsplit(".", 1)[-1] for selector in found}
    assert {"stdlib_bytes", "tabular", "byte_transformer", "BitsPerByte", "digits"} <= names
    for selector, obj in found.items():
        name = selector.rsplit(".", 1)[-1]
        group = listing.role(obj)
        assert name in [e.gin for e in listing.entries(group)], selector
        assert re.search(rf"^  {name}(\(|$)", text, re.MULTILINE), selector
        assert " ".join(docgen.first_sentence(obj.__doc__).split()) in flat, selector
    assert "  tabular(name='iris', eval_fraction=0.0, seed=0)" in text  # a dataset's name
