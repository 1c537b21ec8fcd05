"""What a per-batch LR strategy costs: interleaved timing against a constant-LR
baseline, one profiler trace per strategy, and attribution of op time to the
controller's and the summaries' name scopes.

Two measurements, on purpose:
  * **wall clock** (`ratio`): median time per batch of the compiled training loop,
    strategy over baseline, timed in interleaved blocks (baseline, A, baseline, B, ...)
    so that machine drift hits both alike. This is what a user pays: every op, the
    executor's scheduling, the summary writer, the Python call.
  * **trace attribution** (`controller_us`, `summaries_us`): the summed self time of
    the ops under the `lr_controller/` and `summaries/` name scopes in a profiler
    trace, per batch. It says *where* the time goes, but it is not a share of the wall
    clock: op self times exclude scheduling gaps, ops on two cores overlap (so they can
    add up to more than the wall time they took), and tracing itself slows every op a
    little. On a GPU, device-side kernels are attributed the same way (their names
    keep the scope); host-side launch cost shows in the wall clock only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import gin
import numpy as np
import tensorflow as tf

from lrresearch.analysis.profile_report import OverheadRow, format_table, write_reports  # noqa: F401
from lrresearch.config import parse as config
from lrresearch.config import references as gin_references
from lrresearch.controllers import ConstantController, Controller
from lrresearch.logs import summaries
from lrresearch.optimizers import OPTIMIZERS
from lrresearch.training import distribute
from lrresearch.training.open_run import open_run
from lrresearch.training.trainer import Trainer

CONTROLLER_SCOPE = "lr_controller/"
SUMMARY_SCOPE = "summaries/"
BASELINE = "baseline"
XLA_LABEL = "ConstantController, XLA"
FLAG = "--controllers"


def builtin_controllers() -> list[str]:
    """Names of every registered standalone `Controller` configurable, sorted (wrappers
    such as `Product` and factors such as `LossNudgeFactor` need parts: profile a
    composed controller as a gin reference, `@Product()`, with its bindings)."""
    names = set()
    for selector, fn in config.configurables().items():
        if isinstance(fn, type) and issubclass(fn, Controller) and fn.standalone:
            names.add(selector.rpartition(".")[2])
    return sorted(names)


def make_controller(name: str) -> Controller:
    """Builds the controller `name` with its gin bindings: a standalone configurable's
    name (`GradNormController`) or a gin reference (`@MaxChange()`, `@smooth/MaxChange()`,
    see `lrresearch.config.references`).

    `LossTrendController.max_lr` is required in training; for profiling, where only
    the cost matters, an unbound one given by name defaults to 1.0.
    """
    if gin_references.is_reference(name):
        return gin_references.build(name, Controller, FLAG)
    if name not in builtin_controllers():
        raise ValueError(
            f"{FLAG}: unknown controller {name!r}; known: {', '.join(builtin_controllers())}"
            "\n  A composed controller is a gin reference with its bindings, e.g. "
            f"{FLAG}='@MaxChange()' --gin_param='MaxChange.controller = @PolyakController()'"
        )
    cls = gin.get_configurable(name)
    if name == "LossTrendController":
        try:
            gin.query_parameter("LossTrendController.max_lr")
        except ValueError:
            return cls(max_lr=1.0)
    return cls()


def folder_name(label: str) -> str:
    """A row's folder in the profile directory: its label with what a path cannot
    hold dropped (`@smooth/MaxChange()` -> `smooth.MaxChange`)."""
    return re.sub(r"[^\w.-]+", "_", label.replace("/", ".")).strip("_.") or "controller"


def folder_names(labels: Sequence[str]) -> list[str]:
    """`folder_name` of each label, numbered from `-2` where two would be one folder
    (`ConstantController` and `@ConstantController()`)."""
    folders: list[str] = []
    for label in labels:
        folder, n = folder_name(label), 2
        while folder in folders:
            folder, n = f"{folder_name(label)}-{n}", n + 1
        folders.append(folder)
    return folders


def device_description() -> str:
    """`GPU: <name>` for the first GPU, else `CPU: <model> (<n> cores)`."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)} (x{len(gpus)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {model} ({os.cpu_count()} cores)"


@dataclasses.dataclass
class Variant:
    """One thing being timed: a trainer, its summary writer (None = bare), its times."""

    name: str
    trainer: Trainer
    writer: tf.summary.SummaryWriter | None
    block_seconds: list[float] = dataclasses.field(default_factory=list)
    folder: str = BASELINE  # its folder in the profile directory (`folder_names`)
    controller: str = BASELINE  # what `_build` builds
    jit: bool | None = False  # Trainer.jit_compile (None: as gin binds it)
    optimizer: str | None = None  # an optimizer configurable's name (None: as gin binds)

    def run(self, calls: int, steps_per_call: int) -> float:
        """Runs `calls` compiled calls; returns seconds, synced by one host read."""
        start = time.perf_counter()
        # The writes are waited for at the end: a block pays for its own summaries.
        with self.trainer.logging_to(self.writer) if self.writer else contextlib.nullcontext():
            loss = self.trainer.run_steps(calls * steps_per_call, steps_per_call)
        loss.numpy()  # waits for the device (a GPU runs asynchronously)
        return time.perf_counter() - start


def scope_times_us(xplane_paths: Sequence[str], batches: int) -> dict[str, float]:
    """Per-batch self time (us) of ops under the controller and summary name scopes,
    from profiler traces, via the converter the TensorBoard profile plugin uses."""
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data(list(xplane_paths), "framework_op_stats", {})
    tables = json.loads(data)
    totals = {"controller": 0.0, "summaries": 0.0, "all": 0.0}
    # The first table covers the whole trace (the second excludes the idle time).
    table = tables[0]
    columns = [c["id"] for c in table["cols"]]
    for row in table["rows"]:
        record = dict(
            zip(columns, (cell.get("v") if cell else None for cell in row["c"]), strict=True)
        )
        if record["type"] == "IDLE":
            continue
        op, self_us = str(record["operation"]), float(record["total_self_time"] or 0.0)
        totals["all"] += self_us
        if CONTROLLER_SCOPE in op:
            totals["controller"] += self_us
        elif SUMMARY_SCOPE in op:
            totals["summaries"] += self_us
    return {key: value / batches for key, value in totals.items()}


def bootstrap_median_interval(
    values: Sequence[float], rng: np.random.Generator, resamples: int = 2000
) -> tuple[float, float]:
    """95% bootstrap interval of the median of `values`."""
    samples = rng.choice(np.asarray(values), size=(resamples, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def measure(
    variants: list[Variant],
    rounds: int,
    calls_per_block: int,
    steps_per_call: int,
    progress: Callable[[str], None],
) -> dict[str, list[float]]:
    """Times the variants in interleaved blocks, `rounds` times over:
    baseline, A, baseline, B, ..., baseline (the baseline is `variants[0]`).

    Returns, per non-baseline variant, its paired ratios: each block's time over the
    mean of the two baseline blocks around it.
    """
    baseline, others = variants[0], variants[1:]
    ratios: dict[str, list[float]] = {v.name: [] for v in others}
    start = time.perf_counter()
    for r in range(rounds):
        before = baseline.run(calls_per_block, steps_per_call)
        baseline.block_seconds.append(before)
        for variant in others:
            seconds = variant.run(calls_per_block, steps_per_call)
            variant.block_seconds.append(seconds)
            after = baseline.run(calls_per_block, steps_per_call)
            baseline.block_seconds.append(after)
            ratios[variant.name].append(seconds / (0.5 * (before + after)))
            before = after
        elapsed = time.perf_counter() - start
        eta = elapsed / (r + 1) * (rounds - r - 1)
        progress(f"timing: round {r + 1}/{rounds}  ETA {eta:.0f}s")
    return ratios


def trace(trainer: Trainer, logdir: str, batches: int, with_summaries: bool) -> list[str]:
    """Captures one profiler trace of `batches` batches into `logdir` (one Profile run
    in TensorBoard, next to the traced batches' summaries); returns the xplane files.

    `trainer` should be fresh (built, never run): TF's executor re-estimates op costs
    as a function keeps running, and ops it then deems cheap are no longer recorded by
    the host tracer at any level (seen with TF 2.21: the whole `lr_controller` scope
    vanished from traces taken after ~100 calls). Each batch is its own call of the
    compiled loop (the batch count is a tensor argument: no retrace) inside a
    `Trace` step marker, so the Profile tab's steps are batches.
    """
    writer = summaries.create_writer(logdir) if with_summaries else None
    with trainer.logging_to(writer) if writer else contextlib.nullcontext():
        trainer.run_steps(1).numpy()  # traces the step, outside the profile
        tf.profiler.experimental.start(logdir)
        try:
            for i in range(batches):
                with tf.profiler.experimental.Trace("train", step_num=i, _r=1):
                    loss = trainer.run_steps(1)
            loss.numpy()
        finally:
            tf.profiler.experimental.stop()
    if writer:
        writer.close()
    return sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))


def _build(name: str, jit: bool | None = False, optimizer: str | None = None) -> Trainer:
    """A built trainer of the gin configuration with controller `name` (the baseline:
    `ConstantController`), `Trainer.jit_compile = jit` (None: as gin binds it) and the
    optimizer configurable `optimizer` (None: as gin binds it)."""
    controller = ConstantController() if name == BASELINE else make_controller(name)
    kwargs: dict = {} if jit is None else {"jit_compile": jit}
    if optimizer is not None:
        kwargs["optimizer"] = make_optimizer_class(optimizer)
    trainer = Trainer(controller=controller, strategy=distribute.get_strategy(), **kwargs)
    trainer.build()
    return trainer


def make_optimizer_class(name: str) -> str | type:
    """What `Trainer.optimizer` takes for `name`: one of its short names (`adam`) as
    is, else the optimizer configurable (`Prodigy`, `keras.optimizers.Adam`, ...)."""
    if name in OPTIMIZERS:
        return name
    try:
        return gin.get_configurable(name)
    except ValueError:
        raise ValueError(
            f"--optimizers: unknown optimizer {name!r}; `lrresearch list optimizers` lists "
            "them (e.g. adam, Prodigy, DAdaptAdam, Mechanic, ScheduleFreeAdamW)"
        ) from None


def state_bytes(trainer: Trainer) -> int:
    """Bytes of the state kept next to the model's weights: the optimizer's variables
    (slots, a Mechanic's or Schedule-Free's copies), the controller's (DoG's `x_0`) and
    an iterate average."""
    modules = [trainer.optimizer.variables, trainer.controller.variables]
    if trainer.averager is not None:
        modules.append(trainer.averager.variables)
    return sum(variable_bytes(variables) for variables in modules)


def weight_bytes(trainer: Trainer) -> int:
    """Bytes of the model's trainable weights, those the optimizer trains (what
    `weight_copies` divides by)."""
    return variable_bytes(trainer.variables)


def variable_bytes(variables: Sequence[Any]) -> int:
    """Bytes of `variables` (their elements times their dtype's size)."""
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def _time_variants(
    names: Sequence[str],
    optimizers: Sequence[str],
    out_dir: str,
    rounds: int,
    block_batches: int,
    warmup_batches: int,
    progress: Callable[[str], None],
) -> tuple[list[Variant], dict[str, list[float]], int]:
    """Builds, warms up and times the baseline and every controller in interleaved
    blocks; returns the variants, their ratios to the baseline and batches per block."""
    timing_dir = os.path.join(out_dir, ".timing")
    variants = [Variant(BASELINE, _build(BASELINE), None)]
    labels = ["ConstantController"] + [n for n in names if n != "ConstantController"]
    # (row label, controller, jit, with summaries): the controllers as gin configures
    # them, then the constant LR compiled with XLA, bare and with summaries.
    specs = [(name, name, None, True, None) for name in labels]
    constant = "ConstantController"
    specs += [(f"{constant} + {o}", constant, None, True, o) for o in optimizers]
    if distribute.get_strategy() is None:  # XLA is refused under a strategy
        specs += [(f"{XLA_LABEL}, no summaries", constant, True, False, None)]
        specs += [(XLA_LABEL, constant, True, True, None)]
    folders = folder_names([BASELINE, *(label for label, *_ in specs)])[1:]
    for (label, name, jit, logs, opt), folder in zip(specs, folders, strict=True):
        writer = summaries.create_writer(os.path.join(timing_dir, folder)) if logs else None
        trainer = _build(name, jit, opt)
        variants.append(
            Variant(label, trainer, writer, folder=folder, controller=name, jit=jit, optimizer=opt)
        )
    steps_per_call = variants[0].trainer.steps_per_loop
    calls = max(1, block_batches // steps_per_call)
    for variant in variants:
        progress(f"warming up {variant.name} (traces the step)")
        variant.run(max(2, warmup_batches // steps_per_call), steps_per_call)
    ratios = measure(variants, rounds, calls, steps_per_call, progress)
    for variant in variants:
        if variant.writer:
            variant.writer.close()
    shutil.rmtree(timing_dir, ignore_errors=True)
    return variants, ratios, calls * steps_per_call


def profile(
    controllers: Sequence[str] | None = None,
    optimizers: Sequence[str] = (),
    logdir: str = "runs",
    run_name: str | None = None,
    rounds: int = 15,
    block_batches: int = 400,
    trace_batches: int = 40,
    warmup_batches: int = 200,
    progress: Callable[[str], None] = print,
    seed: int = 0,
) -> tuple[str, list[OverheadRow]]:
    """Measures every controller's per-batch overhead against a constant-LR baseline.

    Each variant is a `Trainer` built from the current gin bindings (model, data,
    optimizer, `steps_per_loop`, summary cadences), with the controller replaced. The
    baseline is `ConstantController` run without a summary writer and without XLA;
    every controller (`ConstantController` included, so the summaries' own cost shows)
    writes the default per-batch summaries. Two more rows time `ConstantController`
    compiled with XLA (`Trainer.jit_compile`), without and with summaries (not under a
    `tf.distribute` strategy, where XLA is refused).

    `optimizers` (configurables' names: `Prodigy`, `ScheduleFreeAdamW`, ...) add one row
    each: `ConstantController` with that optimizer in place of the gin config's. Every
    row also reports the bytes of state it keeps beyond the baseline's (optimizer slots,
    the controller's copies such as DoG's `x_0`).

    `controllers` are standalone configurables' names or gin references built with the
    current bindings (`@MaxChange()`, `@smooth/MaxChange()`; `@config` is the reference
    bound to `Trainer.controller`); each row is labelled as the controller was written
    (`@config` as its reference). Default: every built-in standalone controller.

    Writes into `<logdir>/<run_name or profile-<time>>/`: `overhead.csv`, `overhead.md`,
    `overhead.png`, `config.gin`, and per variant a folder with its profiler trace and
    the summaries of the traced batches (`tensorboard --logdir` on the folder lists one
    Profile run per variant). Returns the folder and the table rows.
    """
    given = [gin_references.expand_config(c, FLAG) for c in controllers or []]
    names = list(dict.fromkeys(given)) or builtin_controllers()
    for name in names:
        make_controller(name)  # fail fast on a bad name or binding
    for name in optimizers:
        make_optimizer_class(name)
    with open_run(logdir, run_name, "profile", gin.config_str(), resumable=False) as run:
        progress(f"profile directory: {run.path}")
        rows = _profile_variants(
            names, optimizers, run.path, rounds, block_batches, trace_batches, warmup_batches,
            progress, seed,
        )  # fmt: skip
    return run.path, rows


def _profile_variants(
    names: Sequence[str],
    optimizers: Sequence[str],
    out_dir: str,
    rounds: int,
    block_batches: int,
    trace_batches: int,
    warmup_batches: int,
    progress: Callable[[str], None],
    seed: int,
) -> list[OverheadRow]:
    """Times and traces every variant into `out_dir`, writes the reports there and
    returns the table's rows (`profile`)."""
    variants, ratios, batches_per_block = _time_variants(
        names, optimizers, out_dir, rounds, block_batches, warmup_batches, progress
    )
    rng = np.random.default_rng(seed)
    base_us = 1e6 * statistics.median(variants[0].block_seconds) / batches_per_block
    base_bytes = state_bytes(variants[0].trainer)
    rows = []
    for variant in variants:
        progress(f"tracing {variant.name} ({trace_batches} batches)")
        with_summaries = variant.writer is not None
        folder = os.path.join(out_dir, variant.folder)
        paths = trace(
            _build(variant.controller, variant.jit, variant.optimizer),
            folder,
            trace_batches,
            with_summaries,
        )
        if variant.name == BASELINE:
            continue
        # Under XLA the trace holds the compiled cluster, not the ops of each scope.
        xla = variant.trainer.jit_compile
        scopes = scope_times_us(paths, trace_batches) if paths and not xla else {}
        low, high = bootstrap_median_interval(ratios[variant.name], rng)
        rows.append(
            OverheadRow(
                controller=variant.controller if variant.jit else variant.name,
                extra_state_bytes=state_bytes(variant.trainer) - base_bytes,
                weight_bytes=weight_bytes(variant.trainer),
                summaries=with_summaries,
                step_us=1e6 * statistics.median(variant.block_seconds) / batches_per_block,
                baseline_step_us=base_us,
                ratio=statistics.median(ratios[variant.name]),
                ratio_low=low,
                ratio_high=high,
                controller_us=scopes.get("controller", float("nan")),
                summaries_us=scopes.get("summaries", float("nan")),
                steps_per_loop=variants[0].trainer.steps_per_loop,
                device=device_description(),
                xla=xla,
            )
        )
    write_reports(rows, out_dir)
    return rows
