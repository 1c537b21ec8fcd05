"""Gin parsing with errors that name the file, line and binding, and suggest a fix."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import tokenize

import gin


class ConfigError(ValueError):
    """A gin file or binding that cannot be used; the message says where and why."""


def configurable_names() -> list[str]:
    """Every registered gin configurable, by its short and its full name."""
    names: set[str] = set()
    for selector, _ in gin.config._REGISTRY.items():
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def _parameters(configurable: str) -> list[str]:
    try:
        matches = gin.config._REGISTRY.get_all_matches(configurable)
    except Exception:
        return []
    params: list[str] = []
    for match in matches:
        fn = match.wrapped
        target = fn.__init__ if inspect.isclass(fn) else fn
        with contextlib.suppress(TypeError, ValueError):
            params += [p for p in inspect.signature(target).parameters if p != "self"]
    return params


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=2, cutoff=0.75)
    return f"\n  Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def explain(error: Exception) -> str:
    """Turns a gin parse error into a message with a suggestion where one exists."""
    message = str(error).strip() or repr(error)
    if m := re.search(r"No configurable matching (?:reference )?'@?([\w.]+)", message):
        message += _suggest(m.group(1), configurable_names())
    elif m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
        params = _parameters(m.group(1))
        message += _suggest(m.group(2), params) or (
            f"\n  Its parameters are: {', '.join(params)}." if params else ""
        )
    return message


def locate_bindings(selector: str, gin_files: list[str], gin_params: list[str]) -> list[str]:
    """Where `Configurable.param` is bound: `file:line` for files, `--gin_param` else."""
    configurable, _, param = selector.rpartition(".")
    pattern = re.compile(rf"^\s*([\w./]*\b)?{re.escape(configurable)}\.{re.escape(param)}\s*=")
    places = []
    for path in gin_files:
        try:
            with open(path) as f:
                places += [f"{path}:{i}" for i, line in enumerate(f, 1) if pattern.match(line)]
        except OSError:
            continue
    places += [f"--gin_param={p!r}" for p in gin_params if pattern.match(p)]
    return places


def _search_paths(gin_file: str) -> list[str]:
    """The file's folder and the nearest enclosing folder named `gin`, so an experiment
    can `include 'base.gin'` or `include 'strategies/grad_norm.gin'`."""
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


def parse(gin_files: list[str], gin_params: list[str]) -> None:
    """Clears earlier bindings, then parses `gin_files` and `gin_params` in order.

    Raises:
      ConfigError: a file is missing, or a binding names an unknown configurable or
        parameter, or does not parse. The message names the file and line.
    """
    # Register every configurable before parsing, so names resolve.
    import lrresearch.controllers
    import lrresearch.data
    import lrresearch.distribute
    import lrresearch.models
    import lrresearch.signals
    import lrresearch.trainer  # noqa: F401

    gin.clear_config()
    for path in gin_files:
        if not os.path.isfile(path):
            hint = ""
            if os.path.isdir("gin"):
                known = [
                    os.path.join(root, f)
                    for root, _, files in os.walk("gin")
                    for f in files
                    if f.endswith(".gin")
                ]
                hint = _suggest(path, known)
            raise ConfigError(f"--gin_file: no such file {path!r}.{hint}")
        for search_path in _search_paths(path):
            if search_path not in gin.config._LOCATION_PREFIXES:
                gin.add_config_file_search_path(search_path)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_params, finalize_config=False)
    except (ValueError, SyntaxError, tokenize.TokenError, OSError, ImportError) as e:
        raise ConfigError(explain(e)) from None


def explain_call_error(error: Exception, gin_files: list[str], gin_params: list[str]) -> str:
    """Adds where a rejected `Configurable.param` was bound to a constructor's error."""
    message = str(error).strip()
    if m := re.search(r"\b([A-Za-z]\w*\.\w+) must\b", message):
        places = locate_bindings(m.group(1), gin_files, gin_params)
        if places:
            message += f"\n  bound at: {', '.join(places)}"
    return message
