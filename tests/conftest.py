"""Shared fixtures: short training runs trained once per session, and an event reader.

Runs are read back with TensorBoard's own loader (`EventAccumulator`), so the tests see
exactly what the TensorBoard UI would see.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

REPO = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO / "gin"
# Holds `user_pkg`, a researcher's own package that gin files `import`; on `sys.path` only
# for the tests that ask for it (the `user_code` fixture, or PYTHONPATH in a subprocess).
USER_CODE = REPO / "tests" / "config" / "user_code"


def default_ctrl_c() -> None:
    """`preexec_fn` for a child that must take Ctrl-C: a shell starts background jobs
    (a CI script's, say) with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored; this restores the default, so the child's Python raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Tags the spec requires for every batch.
BATCH_TAGS = ("lr", "loss/batch", "loss/ma_short", "loss/ma_long", "grad/global_norm")


class Events:
    """A run's events as TensorBoard loads them (TF2 summaries arrive as tensors)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = str(run_dir)
        self.acc = ea.EventAccumulator(self.run_dir, size_guidance={ea.TENSORS: 0})
        self.acc.Reload()

    @property
    def tags(self) -> set[str]:
        return set(self.acc.Tags()["tensors"])

    def plugin(self, tag: str) -> str:
        return self.acc.SummaryMetadata(tag).plugin_data.plugin_name

    def tags_of(self, plugin: str) -> set[str]:
        return {t for t in self.tags if self.plugin(t) == plugin}

    def steps(self, tag: str) -> np.ndarray:
        return np.array([e.step for e in self.acc.Tensors(tag)], dtype=np.int64)

    def values(self, tag: str) -> np.ndarray:
        return np.array([tf.make_ndarray(e.tensor_proto) for e in self.acc.Tensors(tag)])

    def scalar(self, tag: str) -> np.ndarray:
        """The scalar series of `tag`, checked to be one float per step 0, 1, 2, ..."""
        steps = self.steps(tag)
        np.testing.assert_array_equal(steps, np.arange(len(steps)), err_msg=tag)
        return self.values(tag).astype(np.float32)

    def hparams(self) -> dict[str, Any]:
        """The run's own HParams values, as TensorBoard's hparams plugin reads them."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        content = self.acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}

    def text(self, tag: str) -> list[str]:
        return [
            b.decode() if isinstance(b, bytes) else str(b)
            for v in self.values(tag)
            for b in np.ravel(v)
        ]


def read_events(run_dir: str | os.PathLike) -> Events:
    return Events(run_dir)


def binding_lines(params: Mapping[str, Any]) -> list[str]:
    """`{'Trainer.steps': 20}` -> `['Trainer.steps = 20']` (gin syntax, as --gin_param)."""
    lines = []
    for key, value in params.items():
        text = value if isinstance(value, str) and value.startswith("@") else repr(value)
        lines.append(f"{key} = {text}")
    return lines


@dataclasses.dataclass
class Run:
    trainer: Any
    result: Any
    events: Events
    params: dict[str, Any]

    @property
    def run_dir(self) -> str:
        return self.result.run_dir

    def param(self, key: str) -> Any:
        return self.params[key]


def train(
    logdir: str | os.PathLike,
    gin_files: Sequence[str | os.PathLike] = (),
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Run:
    """Parses gin files + bindings, builds `Trainer()` from them and fits it quietly.

    Gin is global state: it is cleared before and after.
    """
    from lrresearch.config import parse as config
    from lrresearch.training.trainer import Trainer

    params = dict(params or {})
    gin.clear_config()
    try:
        config.parse([str(f) for f in gin_files], binding_lines(params))
        trainer = Trainer()
        result = trainer.fit(logdir=str(logdir), run_name=run_name, quiet=True)
    finally:
        gin.clear_config()
    return Run(trainer, result, read_events(result.run_dir), params)


# The three seed strategies, each from its gin file plus non-default bindings chosen so
# that every branch of its rule occurs in a short run on digits (checked by the tests).
SEED_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "grad_norm": (
        "strategies/grad_norm.gin",
        {
            "Trainer.steps": 240,
            "Trainer.steps_per_loop": 25,
            "Trainer.histogram_every": 50,
            "Trainer.eval_every": 100,
            "Trainer.loss_ma_short": 7,
            "Trainer.loss_ma_long": 30,
            "mlp.hidden": (32,),
            # Norms on this run lie in ~[0.3, 0.9]: low-norm branch, slope and floor.
            "GradNormController.base_lr": 0.15,
            "GradNormController.low_norm_threshold": 0.5,
            "GradNormController.low_norm_lr": 0.12,
            "GradNormController.slope": 0.1,
            "GradNormController.min_lr": 0.09,
        },
    ),
    "loss_trend": (
        "strategies/loss_trend.gin",
        {
            "Trainer.steps": 250,
            "Trainer.steps_per_loop": 1,
            "Trainer.histogram_every": 40,
            "Trainer.eval_every": 125,
            "Trainer.loss_ma_short": 5,
            "Trainer.loss_ma_long": 40,
            "mlp.hidden": (32,),
            "LossTrendController.window": 20,
            "LossTrendController.initial_lr": 0.3,
            "LossTrendController.max_lr": 0.6,
            "LossTrendController.min_lr": 0.25,
            "LossTrendController.decrease": 0.8,
            "LossTrendController.increase": 1.1,
        },
    ),
    "cyclical": (
        "strategies/cyclical.gin",
        {
            "Trainer.steps": 180,
            "Trainer.steps_per_loop": 16,
            "Trainer.histogram_every": 60,
            "Trainer.eval_every": 80,
            "Trainer.loss_ma_short": 10,
            "Trainer.loss_ma_long": 100,
            "mlp.hidden": (32,),
            "CyclicalController.min_lr": 0.02,
            "CyclicalController.max_lr": 0.2,
            "CyclicalController.cycle_length": 50,
            "CyclicalController.nudge_below_loss": 1.0,
            "CyclicalController.nudge_factor": 1.5,
        },
    ),
}


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


def snapshot(directory: str | os.PathLike) -> dict[str, tuple[int, int, bytes]]:
    """`{relative path: (mtime_ns, size, content)}` of every file under `directory`."""
    out = {}
    root = pathlib.Path(directory)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size, path.read_bytes())
    return out


def windowed_mean(series: Iterable[float], window: int) -> np.ndarray:
    """Mean of the last `window` values at each index (fewer at the start), in float64."""
    x = np.asarray(list(series), dtype=np.float64)
    return np.array([x[max(0, t - window + 1) : t + 1].mean() for t in range(len(x))])
