"""Helpers shared by the tests: paths, runs read back with TensorBoard's own loader, a
small trainer, the CLI in a subprocess (and SIGKILL at a step), TensorBoard's HTTP API,
and the batches several tests train on.

One home for each: a test module imports from here (fixtures live in `conftest.py`),
never from another test module. Runs are read with TensorBoard's `EventAccumulator`, so
the tests see exactly what the TensorBoard UI would see.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

from lrresearch.config import files

REPO = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = files.SHIPPED  # the shipped gin files
# Holds `user_pkg`, a researcher's own package that gin files `import`; on `sys.path` only
# for the tests that ask for it (the `user_code` fixture, or PYTHONPATH in a subprocess).
USER_CODE = REPO / "tests" / "config" / "user_code"

# Tags the spec requires for every batch.
BATCH_TAGS = ("lr", "loss/batch", "loss/ma_short", "loss/ma_long", "grad/global_norm")


# -- runs read back ----------------------------------------------------------------------


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


# -- trainers in this process -------------------------------------------------------------


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


def small_trainer(*, hidden: Sequence[int] = (8,), build: bool = False, **kwargs: Any):
    """A `Trainer` on digits with `mlp(hidden=hidden)`, no histograms and no evaluation
    unless `kwargs` (any `Trainer` argument) say otherwise; gin cleared first, so only
    `kwargs` configure it. `build=True` builds it (model, optimizer, compiled loop)."""
    from lrresearch.training.trainer import Trainer
    from lrresearch.workloads.models import mlp

    gin.clear_config()
    args = dict(histogram_every=0, eval_every=0, model=functools.partial(mlp, hidden=hidden))
    trainer = Trainer(**{**args, **kwargs})
    if build:
        trainer.build()
    return trainer


# The parameter-free optimizers, each with the LR it is meant to run at (the D-Adaptation
# family's lr is a multiplier of its own estimate); Schedule-Free with its own warmup.
# Shared by tests/optimizers/test_parameter_free_optimizers.py and its mirrored run.
def parameter_free_optimizers() -> dict[str, tuple[Any, float]]:
    import keras

    from lrresearch.optimizers import (
        COCOB,
        IAM,
        DAdaptAdam,
        Mechanic,
        MoMo,
        MoMoAdam,
        Prodigy,
        ScheduleFreeAdamW,
        ScheduleFreeRAdam,
        ScheduleFreeSGD,
        ScheduleFreeWrapper,
    )

    return {
        "Prodigy": (Prodigy, 1.0),
        "DAdaptAdam": (DAdaptAdam, 1.0),
        "Mechanic": (functools.partial(Mechanic, base_optimizer=keras.optimizers.Adam), 0.05),
        "ScheduleFreeSGD": (functools.partial(ScheduleFreeSGD, warmup_steps=5), 0.5),
        "ScheduleFreeAdamW": (functools.partial(ScheduleFreeAdamW, warmup_steps=5), 0.01),
        "ScheduleFreeRAdam": (ScheduleFreeRAdam, 0.01),
        "ScheduleFreeWrapper": (
            functools.partial(ScheduleFreeWrapper, base_optimizer="adam"),
            0.01,
        ),
        "MoMo": (MoMo, 10.0),  # an LR the Polyak step undercuts within 20 batches
        "MoMoAdam": (MoMoAdam, 0.1),
        "COCOB": (COCOB, 1.0),
        "IAM": (IAM, 1.0),
    }


PARAMETER_FREE_STEPS, PARAMETER_FREE_PER_CALL = 20, 10


def parameter_free_trainer(name: str, **kwargs: Any):
    """A built `small_trainer` running the parameter-free optimizer `name` at its LR for
    `PARAMETER_FREE_STEPS` batches, `PARAMETER_FREE_PER_CALL` per compiled call."""
    from lrresearch.controllers import ConstantController

    cls, lr = parameter_free_optimizers()[name]
    args = dict(
        steps=PARAMETER_FREE_STEPS, controller=ConstantController(lr), optimizer=cls,
        steps_per_loop=PARAMETER_FREE_PER_CALL, checkpoint_every=0,
    )  # fmt: skip
    return small_trainer(hidden=(16,), build=True, **{**args, **kwargs})


# -- batches ------------------------------------------------------------------------------


def digit_batches(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` batches of 64 in `Trainer(seed=0, batch_size=64)`'s order, stacked."""
    from lrresearch.workloads.data import BatchSampler, digits

    data = digits()
    sampler = BatchSampler(data.x_train, data.y_train, 64, 0)
    batches = [sampler.next() for _ in range(steps)]
    return np.stack([b[0].numpy() for b in batches]), np.stack([b[1].numpy() for b in batches])


def regression_batches(steps, batch=16, dim=5, seed=1):
    """Linear-regression minibatches (x, y), float32, one per step."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, batch, dim)).astype(np.float32)
    true_w = rng.normal(size=dim)
    y = (x @ true_w + 0.5 + 0.1 * rng.normal(size=(steps, batch))).astype(np.float32)
    return x, y


def regression_grad(w, b, x, y):
    """Gradient of mean((x w + b - y)^2) / 2, as one flat vector [dw, db]."""
    residual = x @ w + b - y
    return np.concatenate([x.T @ residual / len(y), [residual.mean()]])


def controlled_regression(x, y, w0, controller, optimizer, dtype=np.float32):
    """The trainer's per-batch path (batch_signals -> set_lr -> optimizer.apply) on the
    regression of `regression_batches`, compiled; returns (lrs, flat weights after each
    batch). `dtype`: the weights' and data's."""
    from lrresearch.controllers.signals import MovingAverage
    from lrresearch.step.batch import batch_signals, set_lr

    x, y = x.astype(dtype), y.astype(dtype)
    w = tf.Variable(w0.astype(dtype), name="w")
    b = tf.Variable(dtype(0.0), name="b")
    variables = [w, b]
    optimizer.build(variables)
    controller.build(variables)
    ma_short, ma_long = MovingAverage(10), MovingAverage(100)

    @tf.function
    def step(t, xb, yb):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) + b - yb))
        grads = tape.gradient(loss, variables)
        lr_variable = optimizer.learning_rate
        signals = batch_signals(t, loss, grads, variables, ma_short, ma_long, lr_variable)
        lr, _, _ = set_lr(controller, signals, lr_variable)
        optimizer.apply(grads, variables)
        return lr, tf.concat([w, b[None]], 0)

    batches = enumerate(zip(x, y, strict=True))
    out = [step(tf.constant(t, tf.int64), xb, yb) for t, (xb, yb) in batches]
    assert step.experimental_get_tracing_count() == 1
    return np.array([lr for lr, _ in out]), np.array([p for _, p in out])


def keras_callback_lrs(values, lr, mode, patience, factor, cooldown, min_delta, min_lr):
    """Keras's own `ReduceLROnPlateau`, its `on_epoch_end` fed `val_metric = values[i]`
    at epoch `i`: the optimizer's LR after each epoch, float32."""
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(
        monitor="val_metric", factor=factor, patience=patience, mode=mode,
        min_delta=min_delta, cooldown=cooldown, min_lr=min_lr,
    )  # fmt: skip
    callback.set_model(model)
    callback.on_train_begin()
    out = []
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"val_metric": value})
        out.append(float(model.optimizer.learning_rate.numpy()))
    return np.array(out, dtype=np.float32)


# -- the CLI in a subprocess --------------------------------------------------------------


def default_ctrl_c() -> None:
    """`preexec_fn` for a child that must take Ctrl-C: a shell starts background jobs
    (a CI script's, say) with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored; this restores the default, so the child's Python raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_command(*args: str) -> list[str]:
    """`python -u -m lrresearch ARGS...` with this interpreter (unbuffered: each progress
    line reaches the test as it is printed)."""
    return [sys.executable, "-u", "-m", "lrresearch", *args]


def run_cli(
    *args: str, cwd: str | os.PathLike = REPO, env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:  # fmt: skip
    """`lrresearch ARGS...` run to its end; its exit code, stdout and stderr (text)."""
    return subprocess.run(
        cli_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_cli(
    *args: str, cwd: str | os.PathLike = REPO, env: Mapping[str, str] | None = None,
    stderr: int = subprocess.DEVNULL, **popen: Any,
) -> subprocess.Popen:  # fmt: skip
    """`lrresearch ARGS...` started, its stdout a text pipe (stderr: DEVNULL or PIPE;
    `popen`: more `subprocess.Popen` arguments, `preexec_fn=default_ctrl_c` say)."""
    return subprocess.Popen(
        cli_command(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        **popen,
    )  # fmt: skip


def progress_step(line: str) -> int | None:
    """The step of a progress line (`step 120/300 ...`), else None."""
    if not line.startswith("step "):
        return None
    return int(line.split()[1].split("/")[0])


def kill_at_step(process: subprocess.Popen, at_least: int) -> int:
    """SIGKILLs `process` (started with `start_cli`) at its first progress line at step
    >= `at_least`; returns the step that line reported. Fails if the run ended first."""
    try:
        for line in process.stdout:
            step = progress_step(line)
            if step is not None and step >= at_least:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=60)
                assert process.returncode == -signal.SIGKILL
                return step
    finally:
        process.kill()
        process.wait(timeout=60)
    raise AssertionError(f"{process.args} ended before step {at_least}")


@dataclasses.dataclass
class Finished:
    """A finished subprocess: its command, exit code and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"args={self.args}\nexit {self.returncode}\nstdout:\n{self.stdout[-3000:]}\n"
            f"stderr:\n{self.stderr[-3000:]}"
        )


def finish(process: subprocess.Popen, timeout: float = 300) -> Finished:
    """Waits for `process` (stdout and stderr pipes), killed after `timeout` seconds."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return Finished(list(map(str, process.args)), process.returncode, out, err)


# -- the resumable run ---------------------------------------------------------------------

# A LossTrend run that checkpoints every RESUMABLE_EVERY batches, trained whole and killed
# and resumed once per session (the `resumable` fixture) for the resume and recovery tests.
RESUMABLE_STEPS, RESUMABLE_EVERY = 3000, 1000
RESUMABLE_PARAMS = [
    f"Trainer.steps = {RESUMABLE_STEPS}",
    f"Trainer.checkpoint_every = {RESUMABLE_EVERY}",
    "Trainer.steps_per_loop = 10",
    "Trainer.log_every = 100",
    "Trainer.eval_every = 500",
    "Trainer.deterministic = True",
    "Trainer.controller = @LossTrendController()",
    "LossTrendController.window = 20",
    "LossTrendController.max_lr = 0.2",
    "mlp.hidden = (32,)",
]


def resumable_args(logdir: str | os.PathLike, run_name: str, *extra: str) -> list[str]:
    """`train` arguments of the resumable run (`extra`: more flags, `--resume` say)."""
    flags = [f"--gin_param={p}" for p in RESUMABLE_PARAMS]
    return ["train", f"--logdir={logdir}", f"--run_name={run_name}", *flags, *extra]


def raw_lr_steps(run_dir: str | os.PathLike) -> np.ndarray:
    """Steps of every `lr` event in the files as written (no loader purging)."""
    from tensorboard.compat.proto import event_pb2

    from lrresearch.logs import event_files

    steps = []
    for path in event_files.event_files(str(run_dir)):
        for _, data in event_files.read_records(path)[0]:
            event = event_pb2.Event.FromString(data)
            steps += [event.step for v in event.summary.value if v.tag == "lr"]
    return np.array(steps)


@dataclasses.dataclass
class Resumable:
    """The resumable run trained whole (`logdir/full`); the same run SIGKILLed at step
    `killed_at` (`logdir/late`), its newest checkpoint then at `saved`, the `lr` steps its
    files held at that moment, and its `--resume` to the end; and the same run SIGKILLed
    at step 100 (`logdir/early`), the files in its `checkpoints/` then, and its `--resume`."""

    logdir: pathlib.Path
    full: Events
    killed_at: int
    saved: int
    on_disk_when_killed: np.ndarray
    resumed: subprocess.CompletedProcess
    early_checkpoints: list[str]
    early_resumed: Finished


# -- the profile ---------------------------------------------------------------------------

# The bindings of the session's small real profile (the `profile_run` fixture).
PROFILE_SMALL = [
    "mlp.hidden = (16,)",
    "Trainer.steps_per_loop = 5",
    "Trainer.histogram_every = 10",
]
PROFILE_COMPOSED = [
    *PROFILE_SMALL,
    "Trainer.controller = @MaxChange()",
    "MaxChange.controller = @PolyakController()",
    "smooth/MaxChange.max_change_ratio = 0.01",
]


# -- TensorBoard's HTTP API ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, body: dict | None = None):
    """JSON from `http://127.0.0.1:PORT/PATH` (POSTed `body` if given), gunzipped."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        return json.loads(raw)
