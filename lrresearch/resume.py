"""Resuming a run: restore the newest intact checkpoint, repair the run directory.

`resume(trainer, run_dir, ...)` is called by the outer loop (`lrresearch.run`) with
the run directory's lock held. It restores the newest checkpoint that reads back
(`rundir.recover_checkpoint`), refuses one that does not fit the configuration with
the bindings that differ, and cuts from the event files what the interrupted process
logged after the checkpoint (`event_files.drop_steps_from`), so every reader sees one
point per step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from lrresearch import event_files, run_config, tf_data_cache
from lrresearch.rundir import (
    LOCK_FILE,
    ResumeError,
    binding_differences,
    read_text,
    recover_checkpoint,
    write_atomically,
)


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
    trainer: Any,
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
        _restore(trainer, recovery.path, run_dir, saved, config)
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
    differences = _differences(saved, config)
    if differences:
        say(
            "warning: resuming with bindings that differ from the run's config.gin:\n  "
            + "\n  ".join(differences)
        )
        if chief:
            _replace_config(run_dir, saved or "", config, step, say)
    return step


def _differences(saved: str | None, config: str) -> list[str]:
    """The bindings of `config` that differ from the run's `saved` config.gin."""
    if saved is None:
        return []
    return binding_differences(saved, config, ignore=run_config.OBSOLETE)


def _replace_config(
    run_dir: str, saved: str, config: str, step: int, say: Callable[..., None]
) -> None:
    """`config.gin` becomes the configuration the run continues with (a later plain
    `--resume` uses it: a run extended with `Trainer.steps` stays extended); the one
    it replaces is kept as `config-until-step-<step>.gin`."""
    kept = f"config-until-step-{step}.gin"
    write_atomically(os.path.join(run_dir, kept), saved)
    write_atomically(os.path.join(run_dir, run_config.CONFIG_FILE), config)
    say(f"resume: config.gin now holds this configuration; the run's earlier one is {kept}")


def _restore(trainer: Any, path: str, run_dir: str, saved: str | None, config: str) -> None:
    """Restores the checkpoint at `path`; a checkpoint that does not fit this
    configuration is a `ResumeError` naming the bindings that differ."""
    status = None
    try:
        status = trainer.checkpoint.restore(path)
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
        differences = _differences(saved, config)
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
    trainer.after_restore()
