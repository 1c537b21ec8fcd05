"""The configuration `--resume` uses: the run's own `config.gin`, `--gin_param`s on top.

Resuming a run continues it with its own configuration, as Keras's `BackupAndRestore`
and orbit's `Controller` do: `lrresearch train --resume --run_name X` with no
`--gin_file` parses `<logdir>/X/config.gin` (the operative config the run started
with, its `import` lines first), then the `--gin_param`s, so
`--gin_param='Trainer.steps = 5000'` extends the run and changes nothing else. A
`--gin_file` means "this configuration": it replaces the run's, and a checkpoint that
does not fit it is refused with the bindings that differ (`resume.py`).

A `config.gin` written by an older version keeps parsing: a binding that version wrote
and this one no longer takes (`OBSOLETE`) is skipped, and said so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lrresearch.config import imports as gin_imports
from lrresearch.config import parse as config
from lrresearch.training.run_dir import CONFIG_FILE, OBSOLETE, read_text, run_path


def saved_config(logdir: str, run_name: str | None) -> str | None:
    """The path of the run's `config.gin`, or None (no such run, or a bad name, which
    is refused where the run directory is made)."""
    if not run_name or os.sep in run_name or run_name in (".", ".."):
        return None
    path = os.path.join(run_path(logdir, run_name), CONFIG_FILE)
    return path if os.path.isfile(path) else None


def parse(path: str, gin_params: Sequence[str]) -> list[str]:
    """Clears earlier bindings and parses the run's config at `path`, then `gin_params`.

    Returns the obsolete bindings skipped (`OBSOLETE`). Raises `config.ConfigError`
    naming `path:line` (an `import` whose module is not found from this folder, a
    binding this version does not know) or the `--gin_param`.
    """
    text = read_text(path)
    if text is None:
        raise config.ConfigError(f"{path}: no such file; the run has no config.gin")
    lines, skipped = [], []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.partition("=")[0].strip()
        if name in OBSOLETE and "=" in line:
            skipped.append(name)
            line = f"# {line}"  # the line numbers stay those of the file
        elif module := gin_imports.module_of(line):
            _import(module, f"{path}:{number}")
        lines.append(line)
    config.parse([], [])
    try:
        config.parse_binding("\n".join(lines), path)
    except config.ConfigError as e:
        raise config.ConfigError(
            f"{e}\n  The run's config.gin no longer parses (written by another version of "
            "lrresearch or of your modules): resume with a corrected copy, "
            "--gin_file=<copy> --resume"
        ) from None
    for param in gin_params:
        config.parse_binding(param, f"--gin_param={param!r}")
    return skipped


def _import(module: str, where: str) -> None:
    with gin_imports.working_directory_importable():
        message = gin_imports.import_module(module)
    if message is not None:
        raise config.ConfigError(
            f"{where}: import {module}: {message}\n  resume from the folder the run was "
            "started in (its modules are imported as then), or pass --gin_file"
        )


def describe(
    path: str, gin_params: Sequence[str], skipped: Sequence[str], gin_files: Sequence[str] = ()
) -> str:
    """One line: which configuration the resumed run uses (`gin_files`, if given, in
    place of the run's own at `path`)."""
    params = "".join(f" + --gin_param={p!r}" for p in gin_params)
    if gin_files:
        files = " ".join(f"--gin_file={f}" for f in gin_files)
        return f"resume: configuration: {files}{params}, in place of the run's own {path}"
    line = f"resume: configuration: the run's own {path}{params}"
    for name in skipped:
        line += f" (skipped {name}, written by an older version: {OBSOLETE[name]})"
    return line
