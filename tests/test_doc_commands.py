"""Every `lrresearch ...` command shown to users parses as a shell and the CLI would
read it: in README.md, docs/**/*.md and the `--help` examples (`cli_parser.EXAMPLES`).

A command is tokenized as a POSIX shell does (`shlex` with punctuation characters), so
an unquoted `(`, `)`, `;`, `|`, `<`, `>` or `&` (a shell syntax error, a redirect, e.g.
`--controllers=A,@MaxChange()`) fails here; then the real argument parser reads it.
`<YYYYmmdd-HHMMSS>`-style placeholders stand for a word."""

from __future__ import annotations

import re
import shlex

import pytest

from lrresearch.cli import parser as cli_parser
from tests.support import REPO

PLACEHOLDER = re.compile(r"<[A-Za-z_][A-Za-z_.-]*>")  # <YYYYmmdd-HHMMSS>, <run>: stand-ins
SHELL_PUNCTUATION = set("();|<>&")


def shell_lines(text: str, markdown: bool = True) -> list[str]:
    """Logical lines of a page's code blocks (backslash continuations joined; a `$ `
    prompt dropped) and its inline code spans of an `lrresearch` command with a flag; for a
    `--help` epilog (`markdown=False`), its lines."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) if markdown else [text]
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n", " ", block)
        lines += [re.sub(r"^\s*\$\s+", "", line) for line in joined.splitlines()]
    if markdown:
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        lines += re.findall(r"`(lrresearch [^`]* --[^`]+)`", prose)  # with a flag
    return lines


def commands(line: str) -> list[list[str]]:
    """The `lrresearch` commands of one shell line, as argument lists after the name."""
    lexer = shlex.shlex(PLACEHOLDER.sub("X", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:  # unbalanced quotes
        raise AssertionError(f"{line!r}: {e}") from None
    found, current, starts = [], None, True  # `starts`: a command may start here
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            current, starts = None, True
        elif current is not None:
            current.append(token)
        elif starts and token.rpartition("/")[2] == "lrresearch":
            current = []
            found.append(current)
        else:  # `VAR=value lrresearch`, `python -m lrresearch`, `nice -n 10 lrresearch`
            starts = starts and bool(re.match(r"\w+=|python|-m$|nice$|-n$|\d+$", token))
    return found


def sources() -> dict[str, tuple[str, bool]]:
    """Where commands are shown: `{name: (text, is_markdown)}`."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    out = {str(p.relative_to(REPO)): (p.read_text(), True) for p in pages}
    for name, text in cli_parser.EXAMPLES.items():
        out[f"lrresearch {name} --help"] = (text, False)
    return out


def shown_commands() -> list[tuple[str, list[str]]]:
    return [
        (source, argv)
        for source, (text, markdown) in sources().items()
        for line in shell_lines(text, markdown)
        if "lrresearch " in line and not line.lstrip().startswith("#")
        for argv in commands(line)
        if argv and not argv[0].startswith("-") and not argv[0].isupper()  # COMMAND
    ]


def test_the_docs_show_commands_of_every_subcommand():
    shown = {argv[0] for _, argv in shown_commands()}
    assert {"train", "profile", "lr-find", "sweep", "compare", "board"} <= shown, shown


@pytest.mark.parametrize("source, argv", shown_commands(), ids=lambda x: str(x)[:70])
def test_command_shown_in_the_docs_parses(source, argv):
    unquoted = [t for t in argv if set(t) <= SHELL_PUNCTUATION]  # quoted ones are words
    assert not unquoted, f"{source}: {unquoted} in {argv} is unquoted shell syntax; quote it"
    try:
        cli_parser.build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{source}: `lrresearch {shlex.join(argv)}` does not parse") from e


def test_an_unquoted_gin_reference_is_seen_as_shell_syntax():
    assert commands("lrresearch profile --controllers=PolyakController,@MaxChange()") == [
        ["profile", "--controllers=PolyakController,@MaxChange", "()"]
    ]
    assert commands("lrresearch profile --controllers='PolyakController,@MaxChange()'") == [
        ["profile", "--controllers=PolyakController,@MaxChange()"]
    ]
