"""`open_run`: a run directory opened for writing, the one way every command opens one.

`train` (`outer_loop`), `lr-find` (`studies.lr_find`), `profile` (`studies.profile`)
and `sweep` (`studies.sweep`) each write a run directory the same way: created, never
overwriting another (`run_dir.make_run_dir`); locked while this process writes it
(`run_dir.RunLock`); `config.gin` written atomically; one summary writer, opened on
first use. On exit, in this order, even on an exception: the writer is flushed and
closed, then the lock released. A failing flush after a clean exit is raised; after an
error it is not allowed to hide that error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import tensorflow as tf

from lrresearch.logs import summaries
from lrresearch.training.run_dir import (
    CONFIG_FILE,
    RunDirExistsError,
    RunLock,
    make_run_dir,
    run_path,
    write_atomically,
)


@dataclasses.dataclass
class OpenRun:
    """A run directory this process writes (what `open_run` yields).

    Attributes:
      path: `<logdir>/<run_name>`.
      created: True for a new directory, False for an existing run reopened to resume.
      previous_start: when the run's previous writer started (unix seconds, from the
        lock file), None if unknown.
      chief: False for a multi-worker run's other workers, which own nothing in the
        directory: no lock, no `config.gin`, a no-op writer.
    """

    path: str
    created: bool = True
    previous_start: float | None = None
    chief: bool = True
    _writer: tf.summary.SummaryWriter | None = dataclasses.field(default=None, repr=False)

    @property
    def writer(self) -> tf.summary.SummaryWriter:
        """The run's summary writer, opened on first use (a resume first cuts the
        event files); a no-op writer on a worker that is not the chief."""
        if self._writer is None:
            chief = self.chief
            self._writer = (
                summaries.create_writer(self.path) if chief else tf.summary.create_noop_writer()
            )
        return self._writer

    def write_config(self, text: str) -> None:
        """Writes `config.gin` atomically (a reader or a kill sees the whole old
        file or the whole new one); nothing on a worker that is not the chief."""
        if self.chief:
            write_atomically(os.path.join(self.path, CONFIG_FILE), text)

    def close(self) -> None:
        """Flushes and closes the writer if it was opened (idempotent)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.flush()
            finally:
                writer.close()


@contextlib.contextmanager
def open_run(
    logdir: str,
    run_name: str | None,
    prefix: str,
    config: str | None = None,
    name_flag: str = "--run_name",
    resumable: bool = True,
    resume: bool = False,
    chief: bool = True,
) -> Iterator[OpenRun]:
    """Opens `<logdir>/<run_name>` (default name `<prefix>-<YYYYmmdd-HHMMSS>`) for
    writing, holds its lock, and writes `config` (when given) as `config.gin`.

    Args:
      name_flag, resumable: how a refusal names the command's flag, and whether it
        offers `--resume` (`run_dir.make_run_dir`).
      resume: reopen an existing run (`created` False) rather than refuse it.
      chief: False on a multi-worker run's other workers (`OpenRun.chief`).

    Raises:
      RunDirExistsError: the run exists (without `resume`); nothing is touched.
      RunInUseError: another process holds the run's lock.
    """
    if not chief:
        if run_name is None:
            raise ValueError("open_run: a worker that is not the chief needs the run's name")
        run, lock = OpenRun(run_path(logdir, run_name), created=False, chief=False), None
    else:
        try:
            path, created = make_run_dir(logdir, run_name, prefix, name_flag, resumable), True
        except RunDirExistsError:
            if not resume or run_name is None:
                raise
            path, created = run_path(logdir, run_name), False
        lock = RunLock(path).acquire()
        run = OpenRun(path, created, lock.previous_start)
    try:
        if config is not None:
            run.write_config(config)
        yield run
    except BaseException:
        with contextlib.suppress(tf.errors.OpError, OSError):  # the first error wins
            run.close()
        raise
    else:
        run.close()
    finally:
        if lock is not None:
            lock.release()
