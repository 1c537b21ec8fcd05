"""Runs grouped for `compare`: the runs that differ only in their seed form one group
(or, with `--group_by`, the runs with equal values of the named bindings), each group
with a short label.

A group's label is the method its sweep or study recorded for its runs (`sweep.json` /
`study.json`, key "method"), followed by the bindings that tell it apart from the other
groups of that method (`base_lr=0.01`): first the bindings every such group binds and
that differ between them, then, where labels still clash, the bindings that differ
between the clashing groups. A run whose `config.gin` is missing or unreadable is a
group of its own, and its label says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from lrresearch.analysis.bindings import RunConfig, is_seed, method_of, short_value, unscoped

UNBOUND = "(unbound)"


@dataclasses.dataclass
class Group:
    """Runs compared as one: `members` index the runs given to `group_runs`.

    Attributes:
      label: short name for tables and legends.
      members: indices of the group's runs, in run order.
      bindings: the bindings its runs share (all but the seed; with `--group_by`, the
        named ones); None for a run without a readable config.gin.
      method: the method its runs' sweep or study names, or None.
      note: why a run is a group of its own (empty otherwise).
    """

    label: str
    members: list[int]
    bindings: dict[str, str] | None
    method: str | None = None
    note: str = ""


def group_runs(
    configs: Sequence[RunConfig], group_by: Sequence[str] = (), names: Sequence[str] = ()
) -> list[Group]:
    """Groups in order of their first run. `names` (each run's short name,
    `run_labels.labels`) label the runs that are groups of their own."""
    names = list(names) or [os.path.basename(os.path.normpath(c.run)) for c in configs]
    keyed: dict[object, Group] = {}
    for index, config in enumerate(configs):
        if config.bindings is None:
            keyed[("alone", index)] = Group("", [index], None, note=config.problem)
            continue
        if group_by:
            shared = {b: _bound(config.bindings, b) for b in group_by}
        else:
            shared = {b: v for b, v in config.bindings.items() if not is_seed(b)}
        method = None if group_by else method_of(config.run)
        key = (method, tuple(sorted(shared.items())))
        if key not in keyed:
            keyed[key] = Group("", [], shared, method)
        keyed[key].members.append(index)
    groups = list(keyed.values())
    _label(groups, names, bool(group_by))
    return groups


def _bound(bindings: dict[str, str], name: str) -> str:
    """The value of `name` (matched under any scope if not bound unscoped)."""
    if name in bindings:
        return bindings[name]
    scoped = [v for b, v in bindings.items() if unscoped(b) == name]
    return scoped[0] if len(set(scoped)) == 1 else UNBOUND


def _label(groups: list[Group], names: Sequence[str], grouped_by: bool) -> None:
    configured = [g for g in groups if g.bindings is not None]
    for group in groups:
        if group.bindings is None:
            group.label = f"{names[group.members[0]]} ({group.note}: a group of its own)"
    if grouped_by:  # every named binding, in flag order
        for group in configured:
            parts = [f"{_param(b)}={short_value(v)}" for b, v in group.bindings.items()]
            group.label = ", ".join(parts)
        return
    for method in dict.fromkeys(g.method for g in configured):
        peers = [g for g in configured if g.method == method]
        first = _differing(peers, common=True)
        shown = []
        for group in peers:
            clash = [p for p in peers if all(p.bindings[b] == group.bindings[b] for b in first)]
            extra = _differing(clash, common=False) if len(clash) > 1 else []
            shown.append(sorted({*first, *extra}))
        for group, keys in zip(peers, shown, strict=True):
            parts = [
                f"{_param(b, keys)}={short_value(group.bindings.get(b, UNBOUND))}" for b in keys
            ]
            names_ = [names[i] for g in peers for i in g.members]
            group.label = " ".join(filter(None, [method, ", ".join(parts)]))
            group.label = group.label or _common_name(names_)


def _differing(groups: Sequence[Group], common: bool) -> list[str]:
    """Bindings whose values differ between `groups` (only those all of them bind, if
    `common`; a binding some lack differs otherwise)."""
    keys = set().union(*(g.bindings for g in groups))
    if common:
        keys = {k for k in keys if all(k in g.bindings for g in groups)}
    return sorted(k for k in keys if len({g.bindings.get(k, UNBOUND) for g in groups}) > 1)


def _param(binding: str, shown: Sequence[str] = ()) -> str:
    """`Configurable.param` shortened to `param` unless another shown binding has the
    same parameter name."""
    param = binding.rsplit(".", 1)[-1]
    same = [b for b in shown if b.rsplit(".", 1)[-1] == param]
    return binding if len(same) > 1 else param


def _common_name(names: Sequence[str]) -> str:
    """The label of a single group that nothing tells apart: its runs' common folder,
    else "all runs"."""
    parents = {os.path.dirname(n) for n in names}
    if len(parents) == 1 and (parent := parents.pop()):
        return parent
    return "all runs"
