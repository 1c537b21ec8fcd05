"""TensorBoard summaries with exact tags in every code path, and a cheap histogram.

`tf.summary.scalar` inside a `tf.range` loop or a `tf.name_scope` gets `while/` or
`scope/` prefixed to its tag. Everything here goes through `tf.summary.write` with the
plugin's metadata, which keeps the tag exactly as given.

`TAGS` below is the one definition of every tag lrresearch writes (step = global batch
index, starting at 0); the tag reference in `docs/` is generated from it
(`python tools/write_docs.py`), and TensorBoard shows each description on hover.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name="", description="")
HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(display_name="", description="")
HISTOGRAM_BUCKETS = 30


@dataclasses.dataclass(frozen=True)
class Tag:
    """One tag (or family of tags, `<...>` standing for a name) lrresearch writes.

    Attributes:
      name: the tag, e.g. `lr` or `grad/norm/<variable>`.
      kind: `scalar`, `histogram` or `text`.
      every: when it is written, e.g. `batch` or `histogram_every batches`.
      description: what it holds (shown by TensorBoard on hover, for fixed names).
    """

    name: str
    kind: str
    every: str
    description: str


TAGS: tuple[Tag, ...] = (
    Tag("lr", "scalar", "batch", "Learning rate applied to this batch (after the guard)."),
    Tag("loss/batch", "scalar", "batch", "Mean loss of this batch (not a running epoch mean)."),
    Tag("loss/ma_short", "scalar", "batch",
        "Short moving average of loss/batch (Trainer.loss_ma_short batches)."),
    Tag("loss/ma_long", "scalar", "batch",
        "Long moving average of loss/batch (Trainer.loss_ma_long batches)."),
    Tag("grad/global_norm", "scalar", "batch",
        "Global L2 norm of all gradients of this batch, before clipping."),
    Tag("controller/<name>", "scalar", "batch",
        "The controller's own signals (a trend, a factor, a phase); composed controllers "
        "log their parts (base, factor, ...)."),
    Tag("guard/lr_rejected", "scalar", "batch",
        "1 if the controller's LR was NaN/Inf/negative and the previous LR was kept."),
    Tag("guard/skipped", "scalar", "batch",
        "Batches skipped so far because their loss or gradient norm was NaN/Inf (no update "
        "applied)."),
    Tag("grad/norm/<variable>", "scalar", "grad_norm_every batches",
        "L2 norm of one variable's gradient."),
    Tag("grad/<variable>", "histogram", "histogram_every batches",
        "Histogram of one variable's gradient."),
    Tag("weights/<variable>", "histogram", "histogram_every batches",
        "Histogram of one variable's values."),
    Tag("eval/loss", "scalar", "eval_every batches and at the end",
        "Mean loss over the held-out split (every element)."),
    Tag("eval/<metric>", "scalar", "eval_every batches and at the end",
        "Each of Trainer.metrics over the held-out split (eval/accuracy by default)."),
    Tag("config", "text", "once, at step 0", "The operative gin config of the run."),
    Tag("update/ratio/<variable>", "scalar", "grad_norm_every batches",
        "||w_after - w_before|| / ||w_before||: the size of the update this batch applied to "
        "one variable relative to its weights (0 for a skipped batch or all-zero weights)."),
    Tag("optimizer/momentum", "scalar", "batch, when the controller sets it",
        "The optimizer's momentum for this batch (SGD's momentum, Adam's beta_1), logged "
        "only when the controller cycles it (cycle_momentum = True)."),
    Tag("optimizer/weight_decay", "scalar", "batch, when the controller sets it",
        "The optimizer's weight decay for this batch, logged only when the controller "
        "sets it."),
    Tag("optimizer/effective_lr", "scalar", "batch, under an optimizer that sets its own "
        "step size (Prodigy, DAdaptAdam, Mechanic, ScheduleFreeSGD, ScheduleFreeAdamW, "
        "MoMo, MoMoAdam, IAM, COCOB)",
        "The step size the optimizer's update applied to this batch; lr is then the "
        "multiplier the controller set (Prodigy and D-Adapt Adam: d * lr, bias-corrected; "
        "Mechanic: its scale s times lr; Schedule-Free: lr after its warmup; MoMo and IAM: "
        "their Polyak step tau, at most lr; COCOB: ||w_after - w_before|| / ||g||); 0 on a "
        "batch where the method moves no weight (D-Adaptation's first all-zero gradient)."),
    Tag("optimizer/<name>", "scalar", "batch, under an optimizer that sets its own step "
        "size",
        "The optimizer's own state after this batch's update (Prodigy's and D-Adapt Adam's "
        "d, Mechanic's scale, Schedule-Free's average weight, MoMo's lb and loss_avg, "
        "IAM's polyak, COCOB's distance); its docstring says which."),
    Tag("precision/loss_scale", "scalar", "batch, under float16 loss "
        "scaling (Trainer.mixed_precision = 'mixed_float16', or ControlledModel under "
        "Keras's 'mixed_float16' policy)",
        "The dynamic loss scale this batch's loss was multiplied by before its gradients "
        "were taken: it halves after a batch that overflowed and doubles after a long run "
        "that did not (lrresearch.step.precision.LossScale)."),
    Tag("precision/overflow", "scalar", "batch, under float16 loss "
        "scaling (Trainer.mixed_precision = 'mixed_float16', or ControlledModel under "
        "Keras's 'mixed_float16' policy)",
        "1 if this batch's scaled float16 gradients overflowed (its update skipped, the "
        "loss scale halved for the next batch, not counted by guard/skipped), else 0."),
)  # fmt: skip

# Tags written for every batch, in the order they are written.
BATCH_TAGS = ("lr", "loss/batch", "loss/ma_short", "loss/ma_long", "grad/global_norm")

# Shown by TensorBoard when hovering over a chart (tags with a fixed name).
DESCRIPTIONS = {tag.name: tag.description for tag in TAGS if "<" not in tag.name}
DESCRIPTIONS["eval/accuracy"] = "Accuracy over the held-out split."
_SCALAR_METADATA_BY_TAG = {
    tag: scalar_metadata.create_summary_metadata(display_name="", description=text)
    for tag, text in DESCRIPTIONS.items()
}


def create_writer(logdir: str) -> tf.summary.SummaryWriter:
    """A summary writer for per-batch logging.

    TF's default queue of 10 events flushes (and fsyncs) the file every few batches;
    with one summary op per tag that cost ~40 us per batch on 2 CPU cores (a quarter of
    a small MLP's step). The per-batch log now writes one event per batch
    (`lrresearch.logs.rows`): a 200-event queue, flushed at least every 5 s, writes to
    the file every 200 batches or 5 s, whichever comes first, which keeps TensorBoard
    live and leaves at most that much for a SIGKILL to lose (`--resume` cuts it anyway).
    """
    return tf.summary.create_file_writer(logdir, max_queue=200, flush_millis=5000)


def scalar(
    tag: str, value: tf.Tensor | float | Callable[[], tf.Tensor], step: tf.Tensor | int
) -> tf.Tensor:
    """Writes a float32 scalar under exactly `tag` to the default writer.

    `value` may be a callable: it is then evaluated only when the summary is recorded
    (inside `tf.summary.record_if`), so an off-cadence scalar costs nothing.
    """
    metadata = scalar_metadata(tag)
    if callable(value):
        fn = value
        return tf.summary.write(
            tag, lambda: tf.cast(fn(), tf.float32), step=step, metadata=metadata
        )
    return tf.summary.write(tag, tf.cast(value, tf.float32), step=step, metadata=metadata)


def scalar_metadata(tag: str) -> summary_pb2.SummaryMetadata:
    """The scalar plugin's metadata for `tag`, with its description if it has one."""
    return _SCALAR_METADATA_BY_TAG.get(tag, SCALAR_METADATA)


def histogram_buckets(values: tf.Tensor, bucket_count: int = HISTOGRAM_BUCKETS) -> tf.Tensor:
    """Histogram of `values` in TensorBoard's on-disk format: float64 `[bucket_count, 3]`
    rows of `(left_edge, right_edge, count)`.

    Same buckets as `tensorboard.plugins.histogram.summary_v2` (equal-width over
    `[min, max]`, last bucket closed; a single value puts every count in the last
    bucket with left = right = value; empty input gives zeros), with the same float64
    bucket index `floor((x - min) / width)`, but counted with a bincount (weights:
    non-finite values count 0, so the shapes stay static and it compiles under XLA)
    instead of a float64 one-hot of `[N, buckets]`: about 15x cheaper for a 1M-element
    tensor on CPU, as is bincount against `unsorted_segment_sum` (1.9 against 24 ms for
    2M elements here). Non-finite values are left out.
    """
    flat = tf.cast(tf.reshape(tf.cast(values, tf.float32), [-1]), tf.float64)
    # Static shapes only (no boolean_mask), so this also compiles under XLA: a
    # non-finite value is counted with weight 0.
    finite = tf.math.is_finite(flat)
    weights = tf.cast(finite, tf.float64)
    n = tf.reduce_sum(tf.cast(finite, tf.int32))
    inf = tf.constant(float("inf"), tf.float64)
    lo = tf.where(n > 0, tf.reduce_min(tf.where(finite, flat, inf)), 0.0)
    hi = tf.where(n > 0, tf.reduce_max(tf.where(finite, flat, -inf)), 0.0)
    single = tf.equal(lo, hi)
    # TensorBoard's index, in float64: counting in float32 (tf.histogram_fixed_width)
    # moves a value that sits on a bucket edge into the neighbouring bucket.
    width = tf.where(single, tf.ones_like(hi), (hi - lo) / bucket_count)
    position = tf.floor((tf.where(finite, flat, lo) - lo) / width)
    index = tf.minimum(tf.cast(position, tf.int32), bucket_count - 1)
    # `tf.math.bincount` would size its output from max(index): not static under XLA.
    counts = tf.raw_ops.DenseBincount(
        input=index, size=tf.constant(bucket_count, tf.int32), weights=weights
    )
    last = tf.constant(np.eye(bucket_count)[-1])
    counts = tf.where(single, tf.cast(n, tf.float64) * last, counts)
    # `tf.linspace(lo, hi, bucket_count + 1)`'s values (lo, lo + k * (hi - lo) /
    # bucket_count, hi), spelled out: its N-d form was ~60% of tracing the default
    # loop's histograms (8 of them), its slices most of the rest.
    inner = lo + (hi - lo) / bucket_count * tf.constant(np.arange(1.0, bucket_count))
    left = tf.concat([tf.reshape(lo, [1]), inner], 0)
    right = tf.concat([inner, tf.reshape(hi, [1])], 0)
    left = tf.where(single, tf.fill([bucket_count], hi), left)
    right = tf.where(single, tf.fill([bucket_count], hi), right)
    return tf.stack([left, right, counts], axis=1)


def histogram(tag: str, values: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Writes a histogram of `values` under exactly `tag`.

    The buckets are computed only when the summary is recorded (inside
    `tf.summary.record_if`), so a histogram off its cadence costs nothing.
    """
    return tf.summary.write(
        tag, lambda: histogram_buckets(values), step=step, metadata=HISTOGRAM_METADATA
    )


def text(tag: str, markdown: str, step: int = 0) -> tf.Tensor:
    """Writes a text summary (rendered as markdown by TensorBoard's Text tab)."""
    return tf.summary.text(tag, markdown, step=step)


def config_markdown(config: str) -> str:
    """Renders a gin config as a markdown code block for the Text tab."""
    return "\n".join("    " + line for line in config.splitlines())


# Metrics the HParams dashboard shows for every run (final values of these tags).
HPARAM_METRICS = ("eval/accuracy", "eval/loss", "loss/ma_long")


def custom_scalars_layout(optimizer_step: bool = False) -> bytes:
    """The Custom Scalars layout: the LR first, in a chart of its own, then the loss
    moving averages, the gradient norm and the eval results; with `optimizer_step` (an
    optimizer that sets its own step size), a category `optimizer` below them with the
    step it applied, `optimizer/effective_lr`.

    Each chart shows the matching tag of every selected run (TensorBoard merges the
    identical layouts of the runs). The LR has a chart of its own because on the
    losses' axis its movement looked flat; the layout proto has no log-axis option
    (`MultilineChartContent` holds only tag regexes), so a log axis is the chart's
    "Toggle y-axis log scale" button. In the Scalars tab, by contrast, tags are grouped
    by their prefix before `/`, the groups sorted by name and only the first two open,
    so `lr` sits collapsed below `controller`, `eval`, `grad`, `guard` and `loss`
    (TensorBoard 2.21, seen in headless Chromium).
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    def chart(title: str, *tags: str) -> layout_pb2.Chart:
        return layout_pb2.Chart(
            title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags))
        )

    # The optimizer's step is a category of its own: TensorBoard merges the runs'
    # layouts in run-name order and appends a chart new to a category at its end, so
    # only a category keeps one place whichever runs are shown together.
    step = [chart("Step the optimizer applied", r"^optimizer/effective_lr$")]
    optimizer = [layout_pb2.Category(title="optimizer", chart=step)] if optimizer_step else []
    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="lrresearch",
                chart=[
                    chart("LR", r"^lr$"),
                    chart("Loss moving averages", r"^loss/ma_short$", r"^loss/ma_long$"),
                    chart("Gradient norm", r"^grad/global_norm$"),
                    chart("Eval loss", r"^eval/loss$"),
                    chart("Eval accuracy", r"^eval/accuracy$"),
                ],
            ),
            *optimizer,
        ]
    )
    from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary

    return custom_scalar_summary.pb(layout).SerializeToString()


def write_run_header(
    hparams: dict[str, bool | int | float | str], trial_id: str, optimizer_step: bool = False
) -> None:
    """Writes, at step 0 of the default writer, the run's hyperparameters (HParams
    dashboard) and the Custom Scalars layout (`custom_scalars_layout(optimizer_step)`;
    TensorBoard merges the layouts of the runs it shows)."""
    from tensorboard.plugins.hparams import api as hp

    hp.hparams(hparams, trial_id=trial_id)
    tf.summary.experimental.write_raw_pb(custom_scalars_layout(optimizer_step), step=0)


def write_experiment_config(hparams: dict[str, list]) -> None:
    """Writes the HParams experiment (hyperparameters with their swept values, and
    `HPARAM_METRICS`) plus the Custom Scalars layout, for a sweep's root directory."""
    from tensorboard.plugins.hparams import api as hp

    params = []
    for name, values in hparams.items():
        values = list(dict.fromkeys(values))
        if (values and all(isinstance(v, str) for v in values)) or (
            values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            params.append(hp.HParam(name, hp.Discrete(values)))
        else:
            params.append(hp.HParam(name))
    metrics = [hp.Metric(tag, display_name=tag) for tag in HPARAM_METRICS]
    hp.hparams_config(hparams=params, metrics=metrics)
    tf.summary.experimental.write_raw_pb(custom_scalars_layout(), step=0)


def mark_restart(writer: tf.summary.SummaryWriter, step: int) -> None:
    """Writes a `SessionLog.START` event at `step`: TensorBoard then drops the points at
    `step` and later that an interrupted run wrote before it was resumed, so a resumed
    run shows no duplicated or zig-zag points."""
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event(
        wall_time=time.time(),
        step=step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
    )
    tf.raw_ops.ImportEvent(writer=writer._resource, event=event.SerializeToString())


def update_ratio(before: tf.Tensor, after: tf.Tensor) -> tf.Tensor:
    """`||after - before|| / ||before||` in float32: the size of the update a batch
    applied to one variable relative to the variable (0 for a skipped batch, and when
    `before` is all zeros, as a bias at initialization)."""
    before, after = tf.cast(before, tf.float32), tf.cast(after, tf.float32)
    return tf.math.divide_no_nan(tf.norm(after - before), tf.norm(before))
