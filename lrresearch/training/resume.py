"""Resuming a run: restore the newest intact checkpoint, repair the run directory.

`resume(trainer, run_dir, ...)` is called by the outer loop (`lrresearch.training.outer_loop`) with
the run directory's lock held. It restores the newest checkpoint that reads back
(`run_dir.recover_checkpoint`), refuses one that does not fit the configuration with
the bindings that differ, and cuts from the event files what the interrupted process
logged after the checkpoint (`event_files.drop_steps_from`), so every reader sees one
point per step.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable

import gin
import tensorflow as tf

from lrresearch.controllers.base import deserialize_controller, serialize_controller
from lrresearch.logs import event_files
from lrresearch.step import random_state
from lrresearch.training.arguments import with_default_controller
from lrresearch.training.protocol import RunnableTrainer
from lrresearch.training.run_dir import (
    CONFIG_FILE,
    LOCK_FILE,
    OBSOLETE,
    ResumeError,
    binding_differences,
    parse_bindings,
    read_text,
    recover_checkpoint,
    write_atomically,
)
from lrresearch.workloads import tf_data_cache

# The first line of each resume's entry in the history atop a rewritten config.gin.
HISTORY_HEADER = "# Resumed at step "


def print_nothing(*args: object) -> None:
    """A `say` that prints nothing (for the workers that do not own the run)."""
    del args


def _unrestored_values_filter(record: logging.LogRecord) -> bool:
    """Drops TF's "being deleted with unrestored values" report (and its per-value
    lines), which a restore that raised prints when it is garbage-collected: the
    `ResumeError` raised there says what did not fit."""
    message = record.getMessage()
    return not (
        "deleted with unrestored values" in message
        or "Value in checkpoint could not be found in the restored object" in message
    )


def resume(
    trainer: RunnableTrainer,
    run_dir: str,
    config: str,
    say: Callable[..., None],
    chief: bool,
    previous_start: float | None = None,
) -> int | None:
    """Restores `run_dir`'s newest intact checkpoint; returns its step, or None when
    the run starts (again) from step 0. The chief also repairs the run directory:
    interrupted saves and damaged checkpoints are set aside, the event files lose what
    the interrupted process logged after the checkpoint, and a `tf.data` cache lock
    that process left (it started at `previous_start`, unix seconds) is removed."""
    if not chief:
        say = print_nothing
    saved_path = os.path.join(run_dir, "config.gin")
    saved = read_text(saved_path)
    if saved is not None:  # written before config.gin named the default controller
        saved = with_default_controller(saved)
    others = set(os.listdir(run_dir)) - {LOCK_FILE, "checkpoints"}
    if saved is None and others:
        raise ResumeError(
            f"cannot resume {run_dir!r}: it is not an lrresearch run (no config.gin, "
            f"but {len(others)} other entries); pick the run's own --run_name and "
            "--logdir"
        )
    recovery = recover_checkpoint(os.path.join(run_dir, "checkpoints"), repair=chief)
    if chief:
        train_input = getattr(getattr(trainer, "inputs", None), "train", None)
        cache_files = getattr(train_input, "cache_files", ())
        recovery.notes += tf_data_cache.remove_stale_locks(cache_files, previous_start)
    for note in recovery.notes:
        say(f"resume: {note}")
    if recovery.path is not None:
        _restore(trainer, recovery.path, run_dir, saved, config, say)
    step = recovery.step
    if chief:
        trimmed = event_files.drop_steps_from(run_dir, step)
        for damage in trimmed.damage:
            say(f"resume: cut a damaged event file: {damage}")
        if trimmed.dropped_events and recovery.path is not None:
            say(
                f"resume: dropped {trimmed.dropped_events} events logged after step "
                f"{step} by the interrupted process"
            )
    if recovery.path is None:
        if saved is not None:
            say(
                f"resume: {run_dir} has no checkpoint (it stopped before its first): "
                "starting it from step 0"
            )
        return None
    differences = _differences(saved, config, trainer)
    if differences:
        say(
            "warning: resuming with bindings that differ from the run's config.gin:\n  "
            + "\n  ".join(differences)
            + f"\n  (config.gin now records them, its first lines keep what changed; the "
            f"earlier one is config-until-step-{step}.gin)"
        )
        _warn_stretched(trainer, differences, step, say)
        if chief:
            _replace_config(run_dir, saved or "", config, step, differences)
    return step


def _differences(
    saved: str | None, config: str, trainer: RunnableTrainer | None = None
) -> list[str]:
    """The bindings of `config` that differ from the run's `saved` config.gin (what
    `trainer`'s optimizer's class lists only because this version records it, left out)."""
    if saved is None:
        return []
    ignore = {
        *OBSOLETE,
        *_optimizer_newly_recorded(saved, config, trainer),
        *_defaults_newly_recorded(saved, config),
    }
    return binding_differences(saved, config, ignore=ignore)


def _defaults_newly_recorded(saved: str, config: str) -> set[str]:
    """The bindings `config` records at their parameter's default that the run's
    config.gin lacks although it binds that configurable: a parameter added since the
    run was written (`Trainer.weight_averaging = None`), whose default keeps what the
    run did, so it is no change."""
    old, new = parse_bindings(saved), parse_bindings(config)
    owners = {name.rpartition(".")[0] for name in old}
    found = set()
    for name in new.keys() - old.keys():
        owner, _, parameter = name.rpartition(".")
        if owner not in owners:
            continue
        try:
            signature = inspect.signature(gin.get_configurable(owner.rpartition("/")[2]))
        except (ValueError, TypeError, KeyError):
            continue
        default = getattr(signature.parameters.get(parameter), "default", inspect.Parameter.empty)
        if default is not inspect.Parameter.empty and repr(default) == new[name]:
            found.add(name)
    return found


def _optimizer_newly_recorded(saved: str, config: str, trainer: RunnableTrainer | None) -> set[str]:
    """The bindings of the optimizer's class (`SGD.*`) that `config` lists and `saved`
    has none of: versions before issue 22 built a `Trainer.optimizer` short name
    without gin, so their config.gin has no such lines. Left out unless a binding sets
    one of them now (then they differ from what the run trained with)."""
    name = type(getattr(trainer, "optimizer", None)).__name__

    def owned(config_text: str) -> set[str]:
        bindings = parse_bindings(config_text)
        return {n for n in bindings if n.rpartition(".")[0].rpartition(".")[2] == name}

    recorded = owned(config)
    if not recorded or owned(saved) or any(_bound(n) for n in recorded):
        return set()
    return recorded


def _bound(binding: str) -> bool:
    """Whether gin binds `binding` (`SGD.momentum`) explicitly, not by its default."""
    try:
        gin.query_parameter(binding)
    except (ValueError, KeyError):  # not bound (or not one configurable by that name)
        return False
    return True


def _replace_config(
    run_dir: str, saved: str, config: str, step: int, differences: list[str]
) -> None:
    """`config.gin` becomes the configuration the run continues with, below the history
    of its resumes with other bindings (a later plain `--resume` uses it: a run extended
    with `Trainer.steps` stays extended); the one it replaces is kept whole as
    `config-until-step-<step>.gin`."""
    write_atomically(os.path.join(run_dir, f"config-until-step-{step}.gin"), saved)
    write_atomically(
        os.path.join(run_dir, CONFIG_FILE),
        _with_history(config, saved, step, differences),
    )


def _with_history(config: str, saved: str, step: int, differences: list[str]) -> str:
    """`config` below the history of the run's resumes with other bindings: the old
    `config.gin`'s history, then this resume's differences (run -> now)."""
    lines = saved.splitlines()
    old = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), 0)]
    history = [line for line in old if line.startswith((HISTORY_HEADER, "#   "))]
    entry = [f"{HISTORY_HEADER}{step} with bindings that differ (before -> after):"]
    entry += [f"#   {line}" for line in differences]
    return "\n".join([*history, *entry, "", config])


def _warn_stretched(
    trainer: RunnableTrainer, differences: list[str], step: int, say: Callable
) -> None:
    """A schedule whose length is the run's follows a changed `Trainer.steps`: its LR
    sequence from `step` on is the new length's, not the one the run began with."""
    followers = getattr(trainer, "run_length_bindings", {})
    changed = [d for d in differences if d.startswith("Trainer.steps:")]
    if not (followers and changed):
        return
    old_steps = changed[0].split(": ", 1)[1].split(" -> ")[0]
    try:  # the lengths the run began with: a fresh copy of the controller, resolved
        old = deserialize_controller(serialize_controller(trainer.controller))
        keep = old.set_run_length(int(old_steps))
    except (TypeError, ValueError, NotImplementedError):
        keep = {}
    say(
        f"warning: {', '.join(followers)} = None follows the run's length ({changed[0]}): "
        f"from step {step} on the schedule is the new length's, so the LR jumps at the "
        "resume; to keep the old schedule, resume with "
        + (" ".join(f"--gin_param='{b} = {v}'" for b, v in keep.items()) or "its lengths bound")
    )


def _restore(
    trainer: RunnableTrainer, path: str, run_dir: str, saved: str | None, config: str, say: Callable
) -> None:
    """Restores the checkpoint at `path`; a checkpoint that does not fit this
    configuration is a `ResumeError` naming the bindings that differ. One written before
    random streams were saved restores with a warning (`random_state.restore`)."""
    status = None
    try:
        status, warning = random_state.restore(trainer.checkpoint, path)
        # Every saved value must find its variable and the reverse: a checkpoint of
        # another controller (whose variables this one lacks) does not fit either.
        status.assert_consumed()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        if status is not None:
            status.expect_partial()  # no second report at exit; this one says it
        else:  # `restore` itself raised: its half-done restore reports at exit
            tf.get_logger().addFilter(_unrestored_values_filter)
        lines = (str(e).strip() or type(e).__name__).splitlines()
        reason = lines[0][:200] + (" ..." if len(lines) > 1 or len(lines[0]) > 200 else "")
        differences = _differences(saved, config, trainer)
        name, logdir = os.path.basename(run_dir), os.path.dirname(run_dir) or "."
        raise ResumeError(
            f"cannot resume {run_dir!r} from {os.path.basename(path)}: the checkpoint "
            f"does not fit this configuration ({type(e).__name__}: {reason})\n"
            + (
                "bindings that differ from the run's config.gin (run -> now):\n  "
                + "\n  ".join(differences)
                + "\nresume with the run's own configuration (its config.gin, used when "
                f"no --gin_file is given): lrresearch train --resume --run_name {name} "
                f"--logdir {logdir}"
                if differences
                else "no binding differs from the run's config.gin, so the checkpoint "
                "was written by code that kept other state (another version of "
                "lrresearch, or of your model or controller); resume it with that code"
            )
        ) from None
    if warning is not None:
        say(warning)
    trainer.after_restore()
