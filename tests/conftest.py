"""Shared fixtures: short training runs trained once per session, and `user_code`; and
how the suite is split between pytest-xdist's worker processes.

The helpers the tests share (reading events, a small trainer, the CLI in a subprocess,
...) are in `tests/support.py`; fixtures are here, so pytest finds them for every folder.

**Workers.** `pytest` runs the suite in worker processes (`-n auto --dist loadscope` in
`pyproject.toml`; `-n 0` runs it in one process). A session fixture is built once per
*worker*, so every test file is one group (its module fixtures are built once) and the
files that share an expensive session fixture are one group (`SHARED_RUNS`): a worker
never trains a run another worker already trained.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator

import gin
import pytest

from tests.support import (
    GIN_DIR,
    PROFILE_COMPOSED,
    RESUMABLE_EVERY,
    SEED_RUNS,
    USER_CODE,
    Events,
    Resumable,
    Run,
    finish,
    kill_at_step,
    raw_lr_steps,
    resumable_args,
    run_cli,
    start_cli,
    train,
)

# Session fixture -> the test files that use it: they run in one worker.
SHARED_RUNS = {
    "seed_run": ("training/test_trainer.py", "optimizers/test_parameter_free_optimizers.py"),
    "resumable": ("training/test_recovery.py", "training/test_resume.py"),
    "profile_run": ("studies/test_profiling.py", "logs/test_tensorboard_server.py"),
}
# The longest scopes (a SHARED_RUNS group or a file), longest first, as measured with
# `pytest --durations=0` (CONTRIBUTING.md, "Workers"): a worker takes them first, so that
# neither worker is left with a long one at the end while the other idles (xdist orders
# by the number of tests, which put the 56 s worked study, 6 tests, near the end). Order
# only: any scope not listed runs after these, as xdist orders it.
LONGEST_FIRST = (
    "resumable",
    "seed_run",
    "tests/training/test_distribute.py",
    "profile_run",
    "tests/test_worked_study.py",
    "tests/studies/test_tune.py",
    "tests/keras_fit/test_keras_fit.py",
    "tests/cli/test_cli.py",
    "tests/step/test_random_state.py",
    "tests/workloads/test_workload.py",
    "tests/test_examples.py",
    "tests/controllers/test_xla_controllers.py",
)
# Workers for `-n auto`: one per core, at most this many (each imports TensorFlow and
# trains with its own thread pools; more than a few only adds memory).
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per CPU core available to this process, 1 to `MAX_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduler for `--dist loadscope`, with the scope of a test being its
    file, or its `SHARED_RUNS` fixture for the files that share one (xdist's own
    `loadgroup` marks are ignored under pytest >= 9.2, which keeps node ids elsewhere);
    the `LONGEST_FIRST` scopes are handed out first."""
    from xdist.scheduler import LoadScopeScheduling

    group_of = {f"tests/{file}": name for name, files in SHARED_RUNS.items() for file in files}

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return group_of.get(file, file)

        def _assign_work_unit(self, node) -> None:
            for scope in LONGEST_FIRST:  # the longest scope still waiting goes next
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
                    break
            super()._assign_work_unit(node)

    return SharedRunScheduling(config, log)


@pytest.fixture
def user_code(monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """`USER_CODE` on `sys.path` for this test: gin's `import user_pkg.workload` works."""
    monkeypatch.syspath_prepend(str(USER_CODE))
    return USER_CODE


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """`seed_run(name)` trains the named seed-strategy run once per session."""
    logdir = tmp_path_factory.mktemp("seed_runs")
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            gin_file, params = SEED_RUNS[name]
            cache[name] = train(logdir, [GIN_DIR / gin_file], params)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def resumable(tmp_path_factory: pytest.TempPathFactory) -> Resumable:
    """The resumable run (`tests.support.RESUMABLE_PARAMS`) trained whole and, alongside
    it (2 cores), killed well past its first checkpoint (`late`) and before it (`early`),
    both then resumed: once per session, for tests/training/test_recovery.py and
    test_resume.py."""
    logdir = tmp_path_factory.mktemp("resumable")
    whole = start_cli(*resumable_args(logdir, "full"), stderr=subprocess.PIPE)
    early = start_cli(*resumable_args(logdir, "early"))
    late = start_cli(*resumable_args(logdir, "late"))
    kill_at_step(early, 100)
    early_checkpoints = sorted(p.name for p in (logdir / "early" / "checkpoints").glob("*"))
    killed_at = kill_at_step(late, RESUMABLE_EVERY + 300)
    index = (logdir / "late" / "checkpoints").glob("*.index")
    saved = max(int(p.name.split("-")[-1].split(".")[0]) for p in index)
    on_disk = raw_lr_steps(logdir / "late")
    full = finish(whole)
    assert full.returncode == 0, full.describe()
    resuming_early = start_cli(*resumable_args(logdir, "early", "--resume"), stderr=subprocess.PIPE)
    resumed = run_cli(*resumable_args(logdir, "late", "--resume"))
    early_resumed = finish(resuming_early)
    full_events = Events(logdir / "full")
    return Resumable(logdir, full_events, killed_at, saved, on_disk, resumed, early_checkpoints,
                     early_resumed)  # fmt: skip


@pytest.fixture(scope="session")
def profile_run(tmp_path_factory: pytest.TempPathFactory):
    """`(out_dir, rows)` of one small real `lrresearch profile` of two built-in
    controllers, the gin config's controller and a scoped one (plus the constant-LR rows):
    once per session, for tests/studies/test_profiling.py and the TensorBoard server test."""
    from lrresearch.config import parse as config
    from lrresearch.studies import profile as profiling

    config.parse([], [*PROFILE_COMPOSED, "LossTrendController.max_lr = 0.5"])
    try:
        return profiling.profile(
            [
                "GradNormController",
                "DoGController",
                "@config",
                "@smooth/MaxChange()",
                "@MaxChange()",
            ],
            optimizers=["MomentumSGD"],
            logdir=str(tmp_path_factory.mktemp("profile")),
            rounds=3,
            block_batches=20,
            trace_batches=12,
            warmup_batches=10,
            progress=lambda message: None,
        )
    finally:
        gin.clear_config()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for this session (`tests/postgres.py`): its URL."""
    from tests.postgres import postgres_server

    with postgres_server() as url:
        yield url
