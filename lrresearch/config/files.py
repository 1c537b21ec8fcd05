"""The gin files that ship inside the package, and how a name finds a gin file.

The configs are package data (`SHIPPED`: `base.gin`, `strategies/`, `experiments/`),
as t5x and dopamine ship theirs, so a wheel installed anywhere runs
`lrresearch train --gin_file=strategies/loss_trend.gin` from any folder.

A `--gin_file` NAME is the first of these that exists:
  1. NAME itself, relative to the working directory (or absolute): the user's own file
     wins over a shipped one of the same name;
  2. NAME in each `--gin_search_path` folder, in the order given;
  3. NAME in the shipped folder;
  4. the same three with `.gin` appended, if NAME does not end in `.gin`;
  5. the old spelling: what follows NAME's last `gin/` folder, in the shipped folder
     (`gin/strategies/x.gin` as from a checkout before the configs moved here, or a
     sweep's `sweep.json` that recorded it).
An `include 'NAME'` inside a gin file resolves as gin does (the working directory
first), then next to the files being parsed (and in their nearest enclosing folder
named `gin`), then as steps 2 to 5; `config.parse` hands gin the file found. Where a
user's file hides a shipped one of the same name, the command prints a note
(`shadowed`).

Gin's own `gin.add_config_file_search_path` (t5x's `--gin_search_paths`) appends to a
process-wide list that nothing can remove from; a process that parses several configs
(tests, sweeps) would let one parse's folders shadow the next one's files, so the search
path here is passed to each parse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
from collections.abc import Iterator, Sequence

# The one home of the shipped gin files.
SHIPPED = pathlib.Path(__file__).resolve().parent / "gin"
SUFFIX = ".gin"
# An `include` line of a gin file; group 2 is the name.
INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1\s*(?:#.*)?$""")


@dataclasses.dataclass(frozen=True)
class Found:
    """A gin file found by name: its `path`, and the shipped file of the same name it
    hides (a user's `strategies/x.gin` in the working directory), if any."""

    path: str
    shadows: str | None = None


def shipped_names() -> list[str]:
    """Every shipped gin file as `--gin_file` takes it (`strategies/loss_trend.gin`),
    sorted."""
    return sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob(f"*{SUFFIX}"))


def _old_spelling(name: str) -> str | None:
    """What follows the last `gin` folder of `name` (`gin/strategies/x.gin` ->
    `strategies/x.gin`), or None if there is none."""
    parts = pathlib.PurePath(name).parts
    if "gin" not in parts[:-1]:
        return None
    last = len(parts) - 1 - parts[::-1].index("gin", 1)
    return pathlib.PurePath(*parts[last + 1 :]).as_posix()


def candidates(name: str, folders: Sequence[str]) -> Iterator[str]:
    """The paths tried for `name`, in order: in each of `folders` ("" is the working
    directory), then shipped; with `.gin` appended; then the old spelling, shipped."""
    names = [name] if name.endswith(SUFFIX) else [name, name + SUFFIX]
    for each in names:
        if os.path.isabs(each):
            yield each
            continue
        for folder in [*folders, str(SHIPPED)]:
            yield os.path.join(folder, each)
    if (tail := _old_spelling(name)) is not None:
        yield str(SHIPPED / tail)


def find(name: str, folders: Sequence[str]) -> str | None:
    """The first of `candidates(name, folders)` that is a file, or None."""
    return next((path for path in candidates(name, folders) if os.path.isfile(path)), None)


def resolve(name: str, search_path: Sequence[str] = ()) -> Found:
    """The file a `--gin_file` NAME means (see the module docstring).

    Raises:
      FileNotFoundError: no such file; the message names the folders searched and the
        closest shipped names.
    """
    if os.path.isdir(name):
        return Found(name)  # `config.parse` says it is a directory
    path = find(name, ["", *search_path])
    if path is None:
        raise FileNotFoundError(missing(name, search_path))
    shipped = SHIPPED / name
    if shipped.is_file() and not _same_file(path, shipped):
        return Found(path, str(shipped))
    return Found(path)


def include_folders(gin_file: str) -> list[str]:
    """Where a gin file's includes are looked for after the working directory: its
    folder and its nearest enclosing folder named `gin` (so a file in a user's own
    `gin/experiments/` can `include 'base.gin'` from that `gin/`)."""
    folder = os.path.dirname(os.path.abspath(gin_file))
    paths = [folder]
    probe = folder
    while True:
        if os.path.basename(probe) == "gin":
            paths.append(probe)
            break
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return paths


def shadowed(gin_files: Sequence[str], search_path: Sequence[str] = ()) -> list[str]:
    """A note for each `--gin_file` name and `include` (followed through the files) that
    means a file of the user's where a shipped file has the same name: the user's wins,
    and the command says so. Missing files are `config.parse`'s to report."""
    notes, todo, folders = [], [], []
    for name in gin_files:
        with contextlib.suppress(FileNotFoundError):
            found = resolve(name, search_path)
            if found.shadows:
                notes.append(f"--gin_file={name} is {found.path}, not the shipped {found.shadows}")
            todo.append(found.path)
            folders += [p for p in include_folders(found.path) if p not in folders]
    prefixes, seen = ["", *folders, *search_path], set()
    while todo:
        if (path := todo.pop(0)) in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if (m := INCLUDE.match(line)) and (target := find(m[2], prefixes)):
                    todo.append(target)
                    shipped = SHIPPED / m[2]
                    if shipped.is_file() and not _same_file(target, shipped):
                        notes.append(f"{path}:{number}: include {m[2]!r} is {target}, not the "
                                     f"shipped {shipped}")  # fmt: skip
    return notes


def _same_file(path: str, other: pathlib.Path) -> bool:
    return os.path.realpath(path) == os.path.realpath(other)


def missing(name: str, search_path: Sequence[str] = (), where: str = "--gin_file") -> str:
    """The message for a gin file found nowhere: the folders searched and the closest
    shipped names."""
    from lrresearch.config.arguments import suggest

    others = [f for f in dict.fromkeys(search_path) if os.path.abspath(f) != os.getcwd()]
    folders = [f"the working directory ({os.getcwd()})", *others, f"{SHIPPED} (shipped)"]
    names = shipped_names()
    short = _old_spelling(name) or name
    hint = suggest(short, names) or suggest(short.rsplit("/", 1)[-1], names)
    return (
        f"{where}: no such file {name!r}; searched {', '.join(folders)}.{hint}\n"
        "  `lrresearch list configs` lists the shipped files; --gin_search_path=DIR adds "
        "a folder of yours."
    )


def comment_summary(path: str | os.PathLike) -> str:
    """A gin file's one-line summary: its `# Question:` (an experiment's, the sentence
    up to its `?`), else the first sentence of its leading comment (up to a `.`, or a
    `:` that ends a line, before a formula)."""
    comments: list[str] = []
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        elif comments:
            break
    if m := re.search(r"Question:.*?\?", " ".join(comments)):
        return m.group(0)
    text = ""
    for line in comments:
        text = f"{text} {line}".strip()
        if m := re.match(r"(.+?\.)(\s|$)", text):
            return m.group(1)
        if text.endswith(":"):
            return text.rstrip(":")
    return text
