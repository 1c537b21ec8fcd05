"""Gin parsing with errors that name the file, line and binding, and suggest a fix.

A gin file's `import` lines load the user's modules (`gin_imports`); gin keeps them
first in `gin.operative_config_str()`, so a run's `config.gin` re-imports them. Only
gin's public API is used: gin cannot list its registry, so `configurables` finds the
names in lrresearch's modules, `external_configurables` and the imported modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import os
import re
import sys
import tokenize
from collections.abc import Callable, Iterator, Sequence

import gin
from gin import resource_reader

from lrresearch.config import files
from lrresearch.config import imports as gin_imports
from lrresearch.config.arguments import parameters_of, suggest
from lrresearch.config.errors import (  # noqa: F401  (re-exported: config.explain_... is the API)
    VALUE_HINT,
    explain_call_error,
    explain_missing_binding,
    explain_syntax,
    full_names,
    locate_bindings,
)


class ConfigError(ValueError):
    """A gin file or binding that cannot be used; the message says where and why."""


# What gin raises for a file or binding it cannot use (KeyError: an ambiguous name).
_PARSE_ERRORS = (ValueError, KeyError, SyntaxError, tokenize.TokenError, OSError, ImportError)

# Names a gin file may still bind that are not configurable (any more), with what to
# bind instead: gin's own "No configurable matching" (a class) or "has denylisted
# kwarg" (a parameter its callers always pass) would leave the user guessing.
NOT_CONFIGURABLE = {
    "MovingAverage": (
        "MovingAverage is not configurable: the trainer builds its two loss averages.\n"
        "  Bind Trainer.loss_ma_short and Trainer.loss_ma_long (windows, in batches) and "
        "Trainer.loss_ma_kind ('window' or 'ema') instead."
    ),
    "Trainer.strategy": (
        "Trainer.strategy is passed by the command, not bound: choose it with "
        "distribution.strategy ('none', 'mirrored' or 'multi_worker')."
    ),
}


def configurables() -> dict[str, Callable]:
    """Every gin configurable lrresearch knows of, by its full name: lrresearch's own,
    the Keras classes of `external_configurables`, and those of the modules a gin file
    imported (`import my_package.my_module`).

    Gin has no public listing of its registry: the candidates are the functions and
    classes defined in those modules, each confirmed with `gin.get_configurable`.
    """
    from lrresearch import keras_classes as external_configurables

    found: dict[str, Callable] = {}
    for selector in external_configurables.REGISTERED:
        found[selector] = gin.get_configurable(selector)
    roots = ("lrresearch", *gin_imports.imported_roots)
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == r or name.startswith(f"{r}.") for r in roots):
            continue
        for obj in list(vars(module).values()):
            short = getattr(obj, "__name__", None)
            if not callable(obj) or getattr(obj, "__module__", None) != name:
                continue  # a name imported from elsewhere is listed where it is defined
            with contextlib.suppress(KeyError, ValueError, TypeError):
                found[f"{name}.{short}"] = gin.get_configurable(f"{name}.{short}")
    return found


def configurable_names() -> list[str]:
    """Every configurable of `configurables()`, by its short and its full name."""
    names: set[str] = set()
    for selector in configurables():
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def explain(error: Exception, where: str = "") -> str:
    """Turns a gin parse error into a message with a suggestion where one exists.

    `where` names the origin when gin's message cannot (a `--gin_param`)."""
    if isinstance(error, SyntaxError):
        return explain_syntax(error, where)
    message = str(error).strip() or repr(error)
    if isinstance(error, KeyError):  # str() quotes a KeyError's own message
        message = re.sub(r"""^(["'])(.*?)\1(?=\n|$)""", r"\2", message, count=1, flags=re.S)
    for rewritten, original in _rewritten.items():  # the include lines as written
        message = message.replace(rewritten, original)
    message = message.replace(_RESOLVED, "")
    if where:
        message = f"{where}: {message}"
    if m := re.search(r"No configurable matching (?:reference )?'@?([\w.]+)", message):
        if hint := NOT_CONFIGURABLE.get(m.group(1).rsplit(".", 1)[-1]):
            return f"{message}\n  {hint}"
        message += suggest(m.group(1), configurable_names())
    elif m := re.search(r"Configurable '([\w.]+)' has denylisted kwarg '(\w+)'", message):
        owner = m.group(1).rsplit(".", 1)[-1]
        if hint := NOT_CONFIGURABLE.get(f"{owner}.{m.group(2)}"):
            message += f"\n  {hint}"
    elif m := re.search(r"Ambiguous selector '([\w.]+)'", message):
        message += f"\n  Name one in full: {full_names(message)}."
    elif m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
        params = parameters_of(m.group(1))
        message += suggest(m.group(2), params) or (
            f"\n  Its parameters are: {', '.join(params)}." if params else ""
        )
    return message


def _read(path: str, where: str) -> str:
    """The text of a gin file, or a ConfigError naming `where` it was asked for."""
    if os.path.isdir(path):
        raise ConfigError(f"{where}: {path!r} is a directory, not a gin file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{where}: {path!r} is not a gin file (not UTF-8 text: byte {e.start})"
        ) from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path!r} ({e.strerror})") from None


def _check_closed(text: str, where: Callable[[int], str]) -> None:
    """Raises ConfigError if a statement is still open at the end of `text` (gin's own
    error, "EOF in multi-line statement", names neither the file nor the statement)."""
    start = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.NEWLINE:
                start = None
            elif start is None and token.type not in (tokenize.NL, tokenize.COMMENT):
                start = token.start[0]
    except tokenize.TokenError as e:
        line = start or e.args[1][0]
        raise ConfigError(
            f"{where(line)}: this statement is not closed: an unclosed (, [, {{ or "
            "triple-quoted string runs to the end"
        ) from None


def _check_include(name: str, prefixes: Sequence[str], where: str) -> None:
    """Raises ConfigError for `include name`, found in none of `prefixes` nor shipped,
    unless gin's package-resource reader finds it (`pkg/x.gin`)."""
    if not _package_resource(name):
        searched = files.missing(name, [p for p in prefixes if p]).split("; searched ", 1)[1]
        raise ConfigError(f"{where}: include {name!r}: no such file in {searched}")


def _check_file(
    path: str, prefixes: Sequence[str], where: str, chain: list[tuple[str, str]], checked: set[str]
) -> None:
    """Reads `path` and, depth first, the files it includes: each must be readable
    text with every statement closed, and no include may lead back to a file on
    `chain` (gin would recurse until Python's stack overflows)."""
    text = _read(path, where)
    _check_closed(text, lambda line: f"{path}:{line}")
    key = os.path.realpath(path)
    for number, line in enumerate(text.splitlines(), 1):
        if module := gin_imports.module_of(line):
            _import(module, f"{path}:{number}", os.path.dirname(os.path.abspath(path)))
            continue
        if not (m := files.INCLUDE.match(line)):
            continue
        target = files.find(m.group(2), prefixes)
        if target is None:
            _check_include(m.group(2), prefixes, f"{path}:{number}")
            continue  # a gin file shipped inside a Python package, gin's to read
        steps = [*chain, (key, f"{path}:{number} includes {m.group(2)!r}")]
        seen = [k for k, _ in steps]
        if (target_key := os.path.realpath(target)) in seen:
            cycle = ", ".join(step for _, step in steps[seen.index(target_key) :])
            raise ConfigError(
                f"include cycle: {cycle}\n  A file cannot include itself, directly or "
                "through others; remove one of these includes."
            )
        _targets.setdefault(key, {})[m.group(2)] = target
        if target_key not in checked:
            _check_file(target, prefixes, f"{path}:{number}", steps, checked)
    checked.add(key)


class _DropPathNotFound(logging.Filter):
    """Drops gin's `ERROR:root:Path not found: base.gin`: its package-resource reader
    logs it for every file its check is asked about (a missing include is a ConfigError
    anyway)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.module == "resource_reader" and record.msg == "Path not found: %s")


# Gin opens a file with the first of its readers whose check passes: `open` from the
# working directory, then its package-resource reader, which raises TypeError when an
# include's folder is importable as a namespace package (a user's own `strategies/` on
# sys.path); gin has no public way to put a reader first. So `parse` hands gin each
# file as `_RESOLVED + path`, which only `_open_resolved` opens, with every `include`
# rewritten to the file `_check_file` resolved it to (`_targets`).
_RESOLVED = "lrresearch-resolved:"
_targets: dict[str, dict[str, str]] = {}  # {file's real path: {include name: target}}
_rewritten: dict[str, str] = {}  # {include line gin sees: the line in the file}, for errors


class _NamedText(io.StringIO):
    """Text with the file's real path as its `name`: gin's errors name the file."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


def _is_resolved(name: str) -> bool:
    return name.startswith(_RESOLVED) and os.path.isfile(name[len(_RESOLVED) :])


def _open_resolved(name: str) -> _NamedText:
    path = name[len(_RESOLVED) :]
    targets = _targets.get(os.path.realpath(path), {})
    lines = []
    for line in _read(path, path).splitlines():
        if (m := files.INCLUDE.match(line)) and m[2] in targets:
            target = _RESOLVED + os.path.abspath(targets[m[2]])
            _rewritten[f"include {target!r}"] = line.strip()
            line = f"include {target!r}"  # one line for one: line numbers stay
        lines.append(line)
    return _NamedText("\n".join(lines) + "\n", path)


gin.config.register_file_reader(_open_resolved, _is_resolved)


@contextlib.contextmanager
def _quiet_lookups() -> Iterator[None]:
    quiet = _DropPathNotFound()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def _package_resource(name: str) -> bool:
    """Whether gin's package-resource reader finds `include name` (`pkg/x.gin`)."""
    try:
        return resource_reader.system_path_file_exists(name)
    except TypeError:  # a namespace package (no __init__.py): gin cannot read it
        return False


def _import(module: str, where: str, gin_folder: str | None) -> None:
    """Imports the module of the `import` line at `where` before gin does, so that a
    failure is a ConfigError naming the line and the module, not a traceback."""
    if (message := gin_imports.import_module(module, gin_folder)) is not None:
        raise ConfigError(f"{where}: import {module}: {message}")


# Every module with gin configurables (the Keras classes' included); importing them
# registers their names with gin.
CONFIGURABLE_MODULES = (
    "lrresearch.controllers",
    "lrresearch.controllers.signals",
    "lrresearch.keras_classes",
    "lrresearch.optimizers",
    "lrresearch.training.distribute",
    "lrresearch.training.trainer",
    "lrresearch.workloads",
    "lrresearch.workloads.data",
    "lrresearch.workloads.models",
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """Gin files, then bindings, parsed on top of what came before (`parse`'s `then`):
    a sweep's `--method`. `flag` names it in errors (`--method='cosine=...'`)."""

    gin_files: tuple[str, ...] = ()
    gin_params: tuple[str, ...] = ()
    flag: str = "--gin_file"

    def where(self, binding: str) -> str:
        """How an error names `binding`: `--gin_param='...'`, or the layer's flag."""
        if self.flag == "--gin_file":
            return f"--gin_param={binding!r}"
        return f"{self.flag}, binding {binding!r}"


def register_configurables() -> None:
    """Imports every module with gin configurables, so names resolve."""
    for module in CONFIGURABLE_MODULES:
        importlib.import_module(module)


def parse(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    search_path: Sequence[str] = (),
    then: Sequence[Layer] = (),
) -> list[str]:
    """Clears earlier bindings, then parses `gin_files` and `gin_params` in order, then
    each of the `then` layers' files and bindings (a sweep's `--method`, on top).

    A gin file is found by name (`files.resolve`): the working directory, the
    `search_path` folders (`--gin_search_path`), then the shipped files; so are the
    files it includes, next to it first. Returns the paths of the files parsed.

    Raises:
      ConfigError: a file is missing or unreadable, includes are circular, an
        `import` line's module cannot be imported, or a binding names an unknown
        configurable or parameter, or does not parse. The message names the file and
        line, or the `--gin_param`.
    """
    register_configurables()
    gin.clear_config()
    layers = [Layer(tuple(gin_files), tuple(gin_params)), *then]
    found: list[list[str]] = [[] for _ in layers]
    paths: list[str] = []
    for layer, layer_found in zip(layers, found, strict=True):
        for name in layer.gin_files:
            try:
                layer_found.append(path := files.resolve(name, search_path).path)
            except FileNotFoundError:
                raise ConfigError(files.missing(name, search_path, layer.flag)) from None
            paths += [p for p in files.include_folders(path) if p not in paths]
    paths += [p for p in search_path if p not in paths]
    checked: set[str] = set()
    _targets.clear()  # an earlier parse's folders must not resolve this one's includes
    _rewritten.clear()
    with _quiet_lookups(), gin_imports.working_directory_importable():
        for layer, layer_found in zip(layers, found, strict=True):
            for path in layer_found:
                _check_file(path, ["", *paths], layer.flag, [], checked)
        for layer, layer_found in zip(layers, found, strict=True):
            for path in layer_found:
                try:
                    gin.parse_config_file(_RESOLVED + os.path.abspath(path))
                except _PARSE_ERRORS as e:
                    raise ConfigError(explain(e)) from None
            for param in layer.gin_params:
                parse_binding(param, layer.where(param))
    return [path for layer_found in found for path in layer_found]


def parse_binding(binding: str, where: str) -> None:
    """Parses one binding on top of the current config; a ConfigError names `where`
    (the `--gin_param` or `--sweep` it came from) and what gin could not parse."""
    _check_closed(binding, lambda line: where)
    lines = binding.splitlines()
    with gin_imports.working_directory_importable(), _quiet_lookups():
        for number, line in enumerate(lines):
            if module := gin_imports.module_of(line):
                _import(module, where, None)
            elif m := files.INCLUDE.match(line):  # as a --gin_file's include
                if (target := files.find(m[2], [""])) is None:
                    _check_include(m[2], [""], where)
                    continue  # a package resource, gin's to read
                _check_file(target, [""], where, [], set())
                lines[number] = f"include {_RESOLVED + os.path.abspath(target)!r}"
        try:
            gin.parse_config("\n".join(lines))
        except _PARSE_ERRORS as e:
            raise ConfigError(explain(e, where)) from None
