"""Whole methods as one axis of a study: `--method=NAME=SOURCE`, and axes scoped to one.

Methods that differ in several bindings at once (a rule of one's own, warmup-cosine,
Prodigy) are one axis, where `--sweep` axes only form cross products:

    --method='cosine=strategies/warmup_cosine.gin'
    --method='prodigy=Trainer.optimizer = @Prodigy; Trainer.controller = @ConstantController()'
    --method='mine=my_rule.gin; MyRule.k = 3'

NAME matches `[A-Za-z][\\w.-]*`. SOURCE is parts separated by `;` (outside quotes and
brackets): a part ending in `.gin` (with no `=`) is a gin file, found as a
`--gin_file` name is (`config.files`: the working directory, `--gin_search_path`, the
shipped files); any other part is a gin binding (`import` and `include` lines too).

A method's config is the base `--gin_file`s and `--gin_param`s, then the method's
files, then its bindings (`Method.layer`, parsed on top by `config.parse`), then the
point's bindings: a method overrides the base where both bind a name.

An axis whose binding starts with `NAME:` applies to that method only:
`--sweep='cosine:WarmupCosineController.base_lr=[1e-3, 1e-2]'`, `--sample='cosine:...'`;
an axis without a prefix applies to every method. Only a prefix before the first `=`
counts (a gin value may hold a `:`); gin's own scopes are written `scope/Name.param`.
`spaces` gives each method its axes, for `lrresearch sweep` (`sweep.plan_sweep`) and
for any study that searches per method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence

import gin

from lrresearch.config import files
from lrresearch.config import parse as config
from lrresearch.studies import sampling

NAME = re.compile(r"[A-Za-z][\w.-]*")
EXAMPLE = "e.g. --method='cosine=strategies/warmup_cosine.gin'"


@dataclasses.dataclass(frozen=True)
class Method:
    """One `--method`: its name, gin files (as given, found like `--gin_file`s) and
    bindings, in the order written; `spec` is the flag's text."""

    name: str
    gin_files: tuple[str, ...] = ()
    gin_params: tuple[str, ...] = ()
    spec: str = ""

    @property
    def flag(self) -> str:
        return f"--method={self.spec!r}"

    def layer(self) -> config.Layer:
        """The method's files and bindings, to parse on top of the base config."""
        return config.Layer(self.gin_files, self.gin_params, self.flag)


@dataclasses.dataclass(frozen=True)
class Space:
    """One method's share of a study: `method` (None when no `--method` is given) and
    its axes by flag (`{"--sweep": [...], "--sample": [...]}`): the unprefixed ones and
    its own, prefix removed, in the order given."""

    method: Method | None
    axes: Mapping[str, list[str]]

    @property
    def name(self) -> str:
        return self.method.name if self.method else ""

    def layers(self) -> tuple[config.Layer, ...]:
        """What `config.parse` takes as `then` for this space."""
        return (self.method.layer(),) if self.method else ()

    @contextlib.contextmanager
    def named_in_errors(self) -> Iterator[None]:
        """A ConfigError raised inside (checking this space's axes) also names the
        method whose config it was checked under, unless it names it already."""
        try:
            yield
        except config.ConfigError as e:
            if self.method is None or self.method.flag in str(e):
                raise
            raise config.ConfigError(
                f"{e}\n  (an axis of {self.method.flag}, checked under its config; give "
                "an axis to one method only with NAME:Configurable.param=...)"
            ) from None


def split_parts(source: str) -> list[str]:
    """`'a.gin; X.y = "p;q"; Z.w = [1; 2]'` -> its parts, split at each `;` outside
    quotes and brackets, stripped; empty parts (a trailing `;`) are dropped."""
    return [part for part in sampling.split_top_level(source, ";") if part]


def is_gin_file(part: str) -> bool:
    """A part that names a gin file: it ends in `.gin` and binds nothing."""
    return part.endswith(files.SUFFIX) and "=" not in part


def parse_method(spec: str, search_path: Sequence[str] = ()) -> Method:
    """`'cosine=strategies/warmup_cosine.gin; WarmupCosineController.base_lr = 0.1'`
    -> its `Method`. Bindings are parsed later, on top of the base config.

    Raises:
      config.ConfigError: no `NAME=`, a bad NAME, no parts, a gin file found nowhere
        (the message lists where it looked), or a part that is neither a file nor a
        binding. Every message names the `--method`.
    """
    flag = f"--method={spec!r}"
    name, sep, source = spec.partition("=")
    name = name.strip()
    if not sep or not NAME.fullmatch(name):
        raise config.ConfigError(
            f"{flag}: must look like NAME=SOURCE, NAME a letter then letters, digits, "
            f"'_', '.' or '-' (got NAME {name!r}); {EXAMPLE}"
        )
    parts = split_parts(source)
    if not parts:
        raise config.ConfigError(
            f"{flag}: no gin file or binding after {name}=; {EXAMPLE}, or "
            "--method='adam=Trainer.optimizer = \"adam\"'"
        )
    gin_files, gin_params = [], []
    for part in parts:
        if is_gin_file(part):
            try:
                files.resolve(part, search_path)
            except FileNotFoundError:
                raise config.ConfigError(files.missing(part, search_path, flag)) from None
            gin_files.append(part)
        elif "=" in part or re.match(r"(import|include)\s", part):
            gin_params.append(part)
        else:
            raise config.ConfigError(
                f"{flag}: the part {part!r} is neither a gin file (a name ending in .gin) "
                "nor a binding ('Configurable.param = value'); separate parts with ';'"
            )
    return Method(name, tuple(gin_files), tuple(gin_params), spec)


def parse_methods(specs: Sequence[str], search_path: Sequence[str] = ()) -> list[Method]:
    """Every `--method`, in flag order; a ConfigError names a bad or repeated one."""
    methods: list[Method] = []
    for spec in specs:
        method = parse_method(spec, search_path)
        if any(m.name == method.name for m in methods):
            raise config.ConfigError(
                f"{method.flag}: the method {method.name!r} is given twice; give each "
                "--method its own NAME"
            )
        methods.append(method)
    return methods


def split_scope(spec: str) -> tuple[str | None, str]:
    """`'cosine:X.y=[1, 2]'` -> (`'cosine'`, `'X.y=[1, 2]'`); `'X.y=[1]'` -> (None,
    `'X.y=[1]'`). Only a `:` before the first `=` makes a prefix."""
    head = spec.partition("=")[0]
    if ":" not in head:
        return None, spec
    prefix, rest = spec.split(":", 1)
    return prefix.strip(), rest


def spaces(methods: Sequence[Method], axes: Mapping[str, Sequence[str]]) -> list[Space]:
    """Each method's axes: for every flag of `axes` (`{"--sweep": [specs]}`), the
    unprefixed specs and those prefixed with its name (prefix removed), in flag order.
    With no methods, one `Space(None, ...)` holding every spec.

    Raises:
      config.ConfigError: a prefix that names no `--method`; the message names the
        flag and the known methods.
    """
    known = [m.name for m in methods]
    scoped: dict[str, list[tuple[str | None, str]]] = {}
    for flag, specs in axes.items():
        scoped[flag] = []
        for spec in specs:
            prefix, rest = split_scope(spec)
            if prefix is not None and prefix not in known:
                methods_given = ", ".join(known) if known else "none (no --method given)"
                raise config.ConfigError(
                    f"{flag}={spec!r}: {prefix!r} names no --method; the methods are "
                    f"{methods_given}. Write NAME:Configurable.param=..., NAME a --method's, "
                    "or leave the prefix out to apply the axis to every method"
                )
            scoped[flag].append((prefix, rest))
    chosen = methods or [None]
    return [
        Space(
            method,
            {
                flag: [
                    rest
                    for prefix, rest in pairs
                    if prefix in (None, getattr(method, "name", None))
                ]
                for flag, pairs in scoped.items()
            },
        )
        for method in chosen
    ]


def _bound(selector: str) -> str | None:
    """The current gin value of `selector`, as gin source; None if it is not bound."""
    try:
        return repr(gin.query_parameter(selector))
    except (ValueError, KeyError):
        return None


def overridden(
    gin_files: Sequence[str],
    gin_params: Sequence[str],
    methods: Sequence[Method],
    search_path: Sequence[str] = (),
) -> list[str]:
    """A note for each `--gin_param` whose value a method's files or bindings replace
    (the method is parsed on top): a method's file that includes `base.gin` sets every
    default again, which a researcher rarely means. Bindings that do not parse are left
    to the sweep's own checks (no note)."""
    selectors = [m[1] for p in gin_params if (m := re.match(r"\s*([\w./]+)\s*=", p))]
    notes = []
    try:
        config.parse(gin_files, gin_params, search_path)
        before = {selector: _bound(selector) for selector in selectors}
        for method in methods:
            config.parse(gin_files, gin_params, search_path, [method.layer()])
            for selector, value in before.items():
                if (after := _bound(selector)) != value:
                    notes.append(
                        f"{method.flag} sets {selector} = {after} over the --gin_param's "
                        f"{value} (a method comes after the --gin_params; a file that "
                        "includes base.gin belongs in --gin_file)"
                    )
    except config.ConfigError:
        pass
    finally:
        gin.clear_config()
    return notes
