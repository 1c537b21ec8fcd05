"""A run directory on disk: created once, locked while written, recovered on resume.

`<logdir>/<run_name>/` holds the event files, `config.gin`, `checkpoints/` and `.lock`.
A run never overwrites another: a new name is created with `mkdir` (atomic), and the
process that writes a run holds an exclusive lock on its `.lock` file, so a second
`--resume` of the same run fails instead of writing into it. The lock is an
`fcntl.flock`: the kernel releases it when the process ends, however it ends
(SIGKILL included), so there is never a stale lock to remove by hand.

On resume, `recover_checkpoint` finds the newest checkpoint that reads back intact
(a kill during a save, a full disk or a damaged file leave a newest one that does not)
and puts the checkpoint folder in order for `tf.train.CheckpointManager`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import glob
import os
import re
import shutil
import unicodedata
from collections.abc import Collection

import tensorflow as tf

from lrresearch.logs.run_layout import CONFIG_FILE  # noqa: F401  (run_dir.CONFIG_FILE)

# Bindings an older version wrote into config.gin that this one does not take, with why.
OBSOLETE = {
    "Trainer.strategy": "the command passes the strategy; distribution.strategy names it",
}

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the run still never overwrites another)
    fcntl = None

LOCK_FILE = ".lock"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.index$")
DAMAGED_FOLDER = "damaged"


class RunDirExistsError(FileExistsError):
    """The run directory already exists; runs are never overwritten."""


class RunInUseError(RunDirExistsError):
    """Another process holds the run directory's lock."""


class ResumeError(ValueError):
    """A run that cannot be resumed as asked; the message says why and what to do."""


def make_run_dir(
    logdir: str,
    run_name: str | None,
    default_prefix: str,
    name_flag: str = "--run_name",
    resumable: bool = True,
) -> str:
    """Creates and returns `<logdir>/<run_name>`; never reuses an existing directory.

    With no `run_name` the name is `<default_prefix>-<YYYYmmdd-HHMMSS>`, suffixed `-1`,
    `-2`, ... if that exists already. An explicit `run_name` that exists is an error
    whose advice names the command's own flag (`name_flag`) and, for a command that
    can continue it (`resumable`), `--resume`; one that is not a plain directory name is
    an error too (`check_run_name`).
    """
    check_run_name(run_name, name_flag)
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create logdir {logdir!r}: {e.strerror}; pass --logdir") from e
    if not os.access(logdir, os.W_OK):
        raise PermissionError(f"logdir {logdir!r} is not writable; pass another --logdir")
    if run_name is not None:
        path = run_path(logdir, run_name)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise RunDirExistsError(
                f"directory {path!r} already exists and is never overwritten; "
                f"choose another {name_flag}, leave it out for a fresh timestamped name"
                + (", or continue it with --resume" if resumable else "")
            ) from None
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(logdir, f"{default_prefix}-{stamp}")
    for i in range(1000):
        path = base if i == 0 else f"{base}-{i}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RunDirExistsError(f"could not find a free run directory name next to {base!r}")


def check_run_name(run_name: str | None, flag: str = "--run_name") -> None:
    """Raises `ValueError` unless `run_name` (given as `flag`) is None or one plain
    directory name: not empty, `.` or `..`, no path separator, no newline or other
    control character (a name that breaks the one-line messages and shell commands
    that name the run)."""
    if run_name is None:
        return
    separators = [s for s in (os.sep, os.altsep) if s]
    if (
        run_name in ("", ".", "..")
        or any(s in run_name for s in separators)
        or any(unicodedata.category(c) == "Cc" for c in run_name)
    ):
        raise ValueError(
            f"`{flag}` must be one plain directory name (no {' or '.join(separators)}, "
            f"no newline or other control character, not . or ..), got {run_name!r}"
        )


def run_path(logdir: str, run_name: str) -> str:
    """`<logdir>/<run_name>`, refusing names that are not one plain directory name."""
    check_run_name(run_name)
    return os.path.join(logdir, run_name)


class RunLock:
    """An exclusive lock on a run directory, held while one process writes the run.

    Args:
      run_dir: the run directory (it must exist).

    `acquire()` raises `RunInUseError` naming the process that holds the lock. The lock
    file keeps the holder's pid and start time for that message; it is left in place
    on release (removing it would race with a process that just opened it).
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._file = None
        # When the run's previous writer (now ended) started, from its line in the file.
        self.previous_start: float | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunInUseError(
                f"run directory {os.path.dirname(self.path)!r} is in use by {holder}; "
                "two processes never write one run. Wait for it to end (or stop it), "
                "then --resume; or start a new run with another --run_name"
            ) from None
        handle.seek(0)
        if m := re.search(r"\(since ([^)]+)\)", handle.read()):
            with contextlib.suppress(ValueError):
                self.previous_start = datetime.datetime.fromisoformat(m.group(1)).timestamp()
        handle.seek(0)
        handle.truncate()
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} (since {stamp})\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclasses.dataclass
class Recovery:
    """The checkpoint a resumed run restores, and what was done to find it.

    Attributes:
      path: the checkpoint prefix (`.../checkpoints/ckpt-N`), or None when there is no
        usable checkpoint (the run starts again from step 0).
      step: N, or 0.
      notes: one line per thing worth telling the user (a damaged checkpoint set
        aside, an interrupted save cleaned up).
    """

    path: str | None
    step: int
    notes: list[str]


def recover_checkpoint(checkpoint_dir: str, repair: bool = True) -> Recovery:
    """The newest checkpoint in `checkpoint_dir` whose every tensor reads back.

    Checkpoints are found by their `.index` files, not through the `checkpoint` state
    file (which a kill or a bad disk may have damaged). With `repair`, also removes
    folders of interrupted saves (`ckpt-N_temp/`), moves damaged checkpoints to
    `checkpoints/damaged/` (and data files without an index, from a save cut short),
    and rewrites the `checkpoint` state file to list the intact ones, so
    `tf.train.CheckpointManager` keeps and deletes the right files from here on.
    Without it (a multi-worker run's other workers) nothing is changed.
    """
    notes: list[str] = []
    if not os.path.isdir(checkpoint_dir):
        return Recovery(None, 0, notes)
    if not repair:
        for step in _steps(checkpoint_dir):
            if _unreadable(os.path.join(checkpoint_dir, f"ckpt-{step}")) is None:
                return Recovery(os.path.join(checkpoint_dir, f"ckpt-{step}"), step, notes)
        return Recovery(None, 0, notes)
    for temporary in glob.glob(os.path.join(checkpoint_dir, "ckpt-*_temp*")):
        shutil.rmtree(temporary, ignore_errors=True)
        notes.append(f"removed {temporary} (a save that was interrupted)")
    steps = _steps(checkpoint_dir)
    indexed = {f"ckpt-{s}" for s in steps}
    for data in glob.glob(os.path.join(checkpoint_dir, "ckpt-*.data-*")):
        prefix = os.path.basename(data).split(".data-")[0]
        if prefix not in indexed:
            notes.append(f"{prefix} has data but no .index (a save cut short): set aside")
            _set_aside(checkpoint_dir, prefix)
            indexed.add(prefix)  # once per prefix
    chosen = None
    for step in steps:  # newest first; older ones are read only if it is damaged
        problem = _unreadable(os.path.join(checkpoint_dir, f"ckpt-{step}"))
        if problem is None:
            chosen = step
            break
        notes.append(f"ckpt-{step} is damaged ({problem}): set aside")
        _set_aside(checkpoint_dir, f"ckpt-{step}")
    kept = sorted(s for s in steps if chosen is not None and s <= chosen)
    _write_state(checkpoint_dir, kept)
    if chosen is None:
        return Recovery(None, 0, notes)
    return Recovery(os.path.join(checkpoint_dir, f"ckpt-{chosen}"), chosen, notes)


def _steps(checkpoint_dir: str) -> list[int]:
    """Steps of the checkpoints that have an `.index` file, newest first."""
    matches = (CHECKPOINT_PATTERN.match(f) for f in os.listdir(checkpoint_dir))
    return sorted((int(m.group(1)) for m in matches if m), reverse=True)


def _unreadable(prefix: str) -> str | None:
    """Why the checkpoint at `prefix` cannot be read in full, or None if it can."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype == tf.variant:  # a tf.data iterator's state: no numpy form
                tf.raw_ops.RestoreV2(
                    prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[dtype]
                )
            else:
                reader.get_tensor(key)
    except IndexError:  # what TF's reader raises for a data file cut short
        return "its data file is cut short"
    except (tf.errors.OpError, ValueError, RuntimeError) as e:
        first_line = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
        return f"{type(e).__name__}: {first_line[:160]}"
    return None


def _set_aside(checkpoint_dir: str, prefix: str) -> None:
    folder = os.path.join(checkpoint_dir, DAMAGED_FOLDER)
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(os.path.join(checkpoint_dir, prefix + ".*")):
        os.replace(path, os.path.join(folder, os.path.basename(path)))


def _write_state(checkpoint_dir: str, steps: list[int]) -> None:
    """The `checkpoint` file `tf.train.CheckpointManager` reads (a text proto), written
    atomically; removed when there is no checkpoint. Each checkpoint's timestamp is its
    index file's mtime: the manager only deletes checkpoints whose timestamp is after
    `last_preserved_timestamp`, so it keeps `keep_checkpoints` of them from here on."""
    path = os.path.join(checkpoint_dir, "checkpoint")
    if not steps:
        if os.path.exists(path):
            os.remove(path)
        return
    stamps = [os.path.getmtime(os.path.join(checkpoint_dir, f"ckpt-{s}.index")) for s in steps]
    lines = [f'model_checkpoint_path: "ckpt-{steps[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in steps]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in stamps]
    lines.append(f"last_preserved_timestamp: {min(stamps) - 1.0!r}")
    write_atomically(path, "\n".join(lines) + "\n")


def read_text(path: str) -> str | None:
    """The text of `path`, or None if it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file renamed over it: a reader (or
    a kill) sees the old content or the new one, never half of it."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def is_disk_full(error: BaseException) -> bool:
    """True for an error that says the device or the quota has no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_message(run_dir: str, error: BaseException) -> str:
    """One screen: what filled up, how much is free, and how to continue the run."""
    detail = next(
        (line.strip() for line in str(error).splitlines() if "space" in line or "quota" in line),
        str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
    )
    try:
        usage = shutil.disk_usage(run_dir)
        space = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:,.0f} MiB"
    except OSError:
        space = "free space unknown"
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    where = (
        f"its last checkpoint, {os.path.basename(latest)}"
        if latest
        else "step 0 (no checkpoint was written)"
    )
    name, logdir = os.path.basename(run_dir), os.path.dirname(run_dir) or "."
    return (
        f"no space left on the disk of {run_dir} ({space}): {detail[:300]}\n"
        f"The run can continue from {where}: free some space, then run the same command "
        f"with --resume --run_name {name} --logdir {logdir}; or start a new run on a "
        "larger disk with another --logdir."
    )


def parse_bindings(config: str) -> dict[str, str]:
    """`{binding: value}` of a gin operative config (`config.gin`); a value continued
    over several lines is joined into one."""
    bindings: dict[str, str] = {}
    current = None
    for line in config.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            current = None
            continue
        if current is not None and (line[:1].isspace() or bindings[current].endswith("\\")):
            bindings[current] = (bindings[current].rstrip("\\").rstrip() + " " + stripped).strip()
            continue
        name, equals, value = stripped.partition("=")
        if equals and not stripped.startswith(("import ", "include ")):
            current = name.strip()
            bindings[current] = value.strip()
    return bindings


def binding_differences(
    before: str, after: str, limit: int = 12, ignore: Collection[str] = ()
) -> list[str]:
    """The bindings that differ between two operative configs, one line each:
    `name: <before> -> <after>`. A configurable bound on one side only (another
    controller, say) is one line: `GradNormController.*: only before (6 bindings)`.
    Names in `ignore` (bindings one version writes and another does not) are left out."""
    old, new = parse_bindings(before), parse_bindings(after)
    old = {name: value for name, value in old.items() if name not in ignore}
    new = {name: value for name, value in new.items() if name not in ignore}
    owners_before = {n.rpartition(".")[0] for n in old}
    owners_after = {n.rpartition(".")[0] for n in new}
    lines, grouped = [], []
    for owner, side, names in (
        *((o, "before", old) for o in sorted(owners_before - owners_after)),
        *((o, "now", new) for o in sorted(owners_after - owners_before)),
    ):
        count = sum(n.rpartition(".")[0] == owner for n in names)
        grouped.append(
            f"{owner}.*: only {'in the run' if side == 'before' else 'now'} ({count} bindings)"
        )
    one_sided = owners_before ^ owners_after
    for name in sorted(old.keys() | new.keys()):
        if name.rpartition(".")[0] not in one_sided and old.get(name) != new.get(name):
            lines.append(f"{name}: {old.get(name, '(unset)')} -> {new.get(name, '(unset)')}")
    lines += grouped
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
