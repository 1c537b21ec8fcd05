"""The Optuna storage of `lrresearch tune`: opened with heartbeats, errors that name
`--storage`, and the trial a stopped worker leaves re-queued.

Any SQLAlchemy URL works (`sqlite:///...`, `postgresql://user@host:port/db`); nothing
here depends on the database.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from lrresearch.config import parse as config

# A trial whose worker died is re-queued at most this many times.
MAX_RETRIES = 3


class StorageError(config.ConfigError):
    """`--storage` cannot be used; the message names it (password masked) and the fix."""


def masked(url: str) -> str:
    """`url` with its password shown as ***."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _retry(max_retry: int | None) -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The storage at `url`, connected now; trials send a heartbeat every `heartbeat`
    seconds and are failed, then re-queued, 2x that after their last one.

    Raises:
      StorageError: a missing driver, a URL SQLAlchemy cannot read, or a database it
        cannot reach.
    """
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune prints its own lines
    shown = masked(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=_retry(MAX_RETRIES),
            )
    except ImportError as e:
        raise StorageError(
            f"--storage {shown}: the database driver is not installed ({e}); for "
            "PostgreSQL: pip install 'lrresearch[postgres]'"
        ) from None
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(
            f"--storage {shown}: not a database URL SQLAlchemy reads ({e}); e.g. "
            "--storage=postgresql://user@host:5432/db or sqlite:///study.db"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", e) or e).strip().splitlines()
        raise StorageError(
            f"--storage {shown}: cannot reach the database ({reason[0] if reason else e}); "
            "start the server (or fix host, port, user, database name) and run the "
            "command again; nothing was trained or written"
        ) from None


def check_new(storage: RDBStorage, study_name: str, url: str) -> None:
    """A new study's name must not be taken in a shared storage."""
    studies = optuna.get_all_study_summaries(storage, include_best_trial=False)
    names = [s.study_name for s in studies]  # a study with --method: <name>/<method>
    if any(name == study_name or name.startswith(f"{study_name}/") for name in names):
        raise StorageError(
            f"--study_name {study_name}: a study of that name is already in --storage "
            f"{masked(url)}; join it with --resume, or pick another --study_name"
        )


def study_flags(storage: RDBStorage, study_name: str, url: str) -> dict[str, Any]:
    """The flags the study's creator stored (`study.json`'s content), on the study of
    that name or, with `--method`, on each `<study_name>/<method>`."""
    studies = optuna.get_all_study_summaries(storage, include_best_trial=False)
    own = [s for s in studies if s.study_name.split("/")[0] == study_name]
    own.sort(key=lambda s: s.study_name != study_name)  # with --method: <name>/<method>
    if not own:
        raise StorageError(f"--study_name {study_name}: no such study in --storage {masked(url)}")
    flags = own[0].user_attrs.get("flags")
    if flags is None:
        raise StorageError(
            f"--study_name {study_name} in --storage {masked(url)} was not made by "
            "lrresearch tune (no flags stored with it)"
        )
    return flags


def requeue(study: optuna.Study, number: int | None) -> str | None:
    """Queues a copy of trial `number` (stopped by Ctrl-C, so now FAIL) whose run
    resumes from its checkpoint; returns its run's name, None if nothing to queue."""
    if number is None:
        return None
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.FAIL:
        return None
    if "run" not in trial.user_attrs or trial.user_attrs.get("surplus"):
        return None
    _retry(None)(study, trial)
    return trial.user_attrs["run"]
