"""timm's `CosineLRScheduler` stepped per update: cosine with restarts, cycle decay,
k-decay, warmup and LR noise, matched to timm's own arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence

import gin
import tensorflow as tf

from lrresearch.checks import check_bool, check_int, check_nonnegative, check_number, check_positive
from lrresearch.controllers.base import Controller, ControllerOutput, length_warning, run_length
from lrresearch.controllers.signals import Signals, make_signals
from lrresearch.controllers.torch_random import timm_noise_table

OWNER = "TimmCosineController"
NOISE_TYPES = ("normal", "uniform")
# Host-side tables, built once before the step is traced: the cycles' first steps
# (cycle_mul != 1) and the noise of every batch of the noise window.
MAX_CYCLES = 100_000
MAX_NOISE_STEPS = 2_000_000  # float64: 16 MB; drawn at 20-45 us a batch here: 40-90 s
_NO_HORIZON = 2**53  # steps beyond any run: cycles are tabled up to here when unknown


@gin.configurable
class TimmCosineController(Controller):
    """timm's `CosineLRScheduler(t_in_epochs=False)` stepped once per batch: cosine with
    restarts like `CosineRestartsController` (PyTorch's SGDR), plus timm's cycle decay,
    k-decay, cycle limit, warmup and LR noise.

    Batch `t` (0-based) trains at the LR timm's training loop gives the optimizer
    before update `t + 1`: the LR set at construction for `t = 0`, then the LR of
    `step_update(num_updates=t)` (timm's `train.py` calls it after each optimizer
    step). With `u = t - warmup_t` if `warmup_prefix` else `t`, in timm's float
    arithmetic (float64 here, rounded to float32 once):
      * `t < warmup_t`: `warmup_lr_init + t * (base_lr - warmup_lr_init) / warmup_t`;
      * cycle `i` of length `T_i = t_initial * cycle_mul**i` holding `u`, at `u_i` into
        it (`i = floor(log_{cycle_mul}(1 - u / t_initial * (1 - cycle_mul)))`,
        `u // t_initial` when `cycle_mul = 1`), while `i < cycle_limit`:
        `lr_min + 0.5 * (base_lr * cycle_decay**i - lr_min) * (1 + cos(pi * u_i**k_decay
        / T_i**k_decay))`;
      * after the last cycle: `lr_min`;
      * noise, for `t` in `noise_range_t` (`[start, end)`, or from `start` on): `lr + lr *
        n`, with `n` timm's draw for `noise_seed + t`, a normal draw times `noise_std`
        redrawn until `|n| < noise_pct`, or uniform in `[-noise_pct, noise_pct)`.

    The noise is torch's own stream (`torch.Generator().manual_seed(noise_seed + t)`,
    reproduced on the host by `torch_random.py`, no torch needed), drawn for the whole
    window before the step is traced and read in-graph by step: the same numbers as
    timm, a pure function of `(noise_seed, t)`, so a resumed run draws what an
    uninterrupted one does. Its cost: 20-45 us of host time (measured on 2 shared EPYC
    cores) and 8 bytes per noisy batch, once per run.
    The cycle index comes from a table of the cycles' first steps computed with
    timm's own float `log` (TensorFlow's differs in the last bit, which moves a cycle's
    start at exact boundaries).

    Logs `controller/cycle` (the cycle index `i`, `cycle_limit` past the last),
    `controller/warmup` (1 in the warmup) and `controller/noise` (`n`, 0 outside the
    window).

    Differences from timm: `base_lr` is an argument (timm reads the optimizer's LR);
    with `cycle_mul < 1` the steps past the cycles' finite total train at `lr_min`
    (timm raises `math domain error`); batch 0 is never noisy, as in timm (the LR set
    at construction has no noise).

    Args:
      base_lr: the LR of the first cycle's start (> 0); timm reads it from the optimizer.
      t_initial: the first cycle's length in batches (>= 1); None (the default): the
        run's length, minus `warmup_t` with `warmup_prefix` (required under Keras
        `fit`, where the run's length is unknown).
      lr_min: the LR at each cycle's end and after the last cycle (>= 0).
      cycle_mul: each cycle is `cycle_mul` times longer than the one before (> 0).
      cycle_decay: each cycle's peak is `cycle_decay` times the one before (> 0).
      cycle_limit: the number of cycles (>= 1); then `lr_min`.
      warmup_t: linear warmup length in batches (>= 0).
      warmup_lr_init: the LR of batch 0 with a warmup (>= 0).
      warmup_prefix: False (timm's default): the warmup overlaps the first cycle; True:
        the cycles start after it.
      k_decay: the cosine's argument is `(u_i / T_i)**k_decay` (> 0; 1: plain cosine).
      noise_range_t: None (no noise), a batch index (noise from there on), or a pair
        `(start, end)` (noise for `start <= t < end`); numbers of batches.
      noise_pct: the noise's bound, `|n| < noise_pct` (> 0).
      noise_std: the normal noise's standard deviation (> 0).
      noise_seed: the seed; batch `t` draws from `noise_seed + t` (int >= 0), so seeds
        `s` and `s + 1` draw the same noise one batch apart, as in timm.
      noise_type: "normal" (timm's default) or "uniform" (timm's `Scheduler` takes it;
        `CosineLRScheduler` does not pass it on: set `scheduler.noise_type`).

    Examples:
      Trainer.controller = @TimmCosineController()
      TimmCosineController.base_lr = 0.1
      TimmCosineController.warmup_t = 100           # batches
      TimmCosineController.warmup_lr_init = 1e-4
      TimmCosineController.lr_min = 1e-5            # decays over Trainer.steps

      >>> from lrresearch.controllers import TimmCosineController
      >>> from lrresearch.controllers.signals import make_signals
      >>> c = TimmCosineController(base_lr=0.1, t_initial=100, cycle_limit=2, cycle_decay=0.5)
      >>> [round(float(c.compute(make_signals(t, 1.0)).lr), 4) for t in (0, 50, 100, 150, 200)]
      [0.1, 0.05, 0.05, 0.025, 0.0]

    References:
      timm, `timm.scheduler.CosineLRScheduler` (`timm/scheduler/cosine_lr.py`,
      `scheduler.py`; https://huggingface.co/docs/timm/reference/schedulers).
      Loshchilov, Hutter. "SGDR: Stochastic Gradient Descent with Warm Restarts."
      ICLR 2017. Zhang, Li. "k-decay: A New Method For Learning Rate Schedule."
      arXiv:2004.05909 (2020).
    """

    # Host-built tables, cached with their key; not state (checkpoints never see them).
    _TF_MODULE_IGNORED_PROPERTIES = Controller._TF_MODULE_IGNORED_PROPERTIES | {
        "_cycle_cache",
        "_noise_cache",
    }

    def __init__(
        self,
        base_lr: float = 0.1,
        t_initial: int | None = None,
        lr_min: float = 0.0,
        cycle_mul: float = 1.0,
        cycle_decay: float = 1.0,
        cycle_limit: int = 1,
        warmup_t: int = 0,
        warmup_lr_init: float = 0.0,
        warmup_prefix: bool = False,
        k_decay: float = 1.0,
        noise_range_t: int | float | Sequence[float] | None = None,
        noise_pct: float = 0.67,
        noise_std: float = 1.0,
        noise_seed: int = 42,
        noise_type: str = "normal",
        name: str | None = None,
    ):
        super().__init__(name=name)
        check_positive(OWNER, base_lr=base_lr, cycle_mul=cycle_mul, cycle_decay=cycle_decay)
        check_positive(OWNER, k_decay=k_decay, noise_pct=noise_pct, noise_std=noise_std)
        if t_initial is not None:
            check_int(OWNER, "t_initial", t_initial, 1)
        check_int(OWNER, "cycle_limit", cycle_limit, 1)
        check_int(OWNER, "warmup_t", warmup_t, 0)
        check_int(OWNER, "noise_seed", noise_seed, 0)
        check_nonnegative(OWNER, lr_min=lr_min, warmup_lr_init=warmup_lr_init)
        check_bool(OWNER, "warmup_prefix", warmup_prefix)
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"{OWNER}.noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
        self.noise_window = _noise_window(noise_range_t)
        self.base_lr, self.lr_min = float(base_lr), float(lr_min)
        self.t_initial_argument, self.t_initial = t_initial, t_initial
        self.cycle_mul, self.cycle_decay = float(cycle_mul), float(cycle_decay)
        self.cycle_limit, self.k_decay = cycle_limit, float(k_decay)
        self.warmup_t, self.warmup_prefix = warmup_t, warmup_prefix
        self.warmup_lr_init = float(warmup_lr_init)
        self.noise = (noise_seed, float(noise_pct), float(noise_std), noise_type)
        self.run_span: tuple[int | None, str] = (None, "Trainer.steps")
        # timm's construction: the warmup's first LR, else the optimizer's own.
        self.initial_lr = self.warmup_lr_init if warmup_t else self.base_lr

    def set_run_length(self, steps: int | None, span: str = "Trainer.steps") -> dict[str, int]:
        """`t_initial = None` becomes `steps` (minus `warmup_t` with `warmup_prefix`, at
        least 1); `steps` also ends a noise window given by its start alone."""
        prefix = self.warmup_t if self.warmup_prefix else 0
        rest = None if steps is None else steps - prefix
        argument = self.t_initial_argument
        self.t_initial = run_length(OWNER, "t_initial", argument, rest, 1)
        self.run_span = (steps, span)
        if self.noise_window is not None and steps is not None:
            self._noise_range()  # a window too long to draw is an error before training
        return {} if argument is not None else {f"{OWNER}.t_initial": self.t_initial}

    def schedule_length(self) -> float:
        """Batches until the last cycle ends, warmup prefix included (timm's
        `get_cycle_length()`); inf for `cycle_mul < 1` cycles that never end in time."""
        cycles, m, t_initial = self.cycle_limit, self.cycle_mul, self.t_initial
        if m == 1.0:
            length = t_initial * cycles
        else:
            try:
                length = math.floor(-t_initial * (m**cycles - 1) / (1 - m))
            except OverflowError:
                length = math.inf
        return length + self.warmup_t if self.warmup_prefix else length

    def run_warnings(self, steps: int | None) -> list[str]:
        """Warns when the run ends inside the warmup, when the cycles end before the run
        or are cut by it, and when the noise window starts after the run."""
        span, name = self.run_span if self.run_span[0] is not None else (steps, "Trainer.steps")
        if span is None:
            return []
        warnings = []
        if self.warmup_t >= span:
            warnings.append(
                f"{OWNER}.warmup_t = {self.warmup_t} is not over in {name} = {span} "
                f"batches, so the LR only rises; lower {OWNER}.warmup_t"
            )
        if self.noise_window is not None and self.noise_window[0] >= span:
            warnings.append(
                f"{OWNER}.noise_range_t starts at batch {self.noise_window[0]}, after the "
                f"run's {name} = {span}, so the LR is never noisy; lower its start"
            )
        if self.t_initial is None or self.warmup_t >= span:
            return warnings
        length = self.schedule_length()
        if length < span or self.cycle_limit == 1:
            copy = TimmCosineController.from_config(
                {**self.get_config(), "t_initial": self.t_initial, "noise_range_t": None}
            )
            copy.set_run_length(span, name)
            last = float(copy.compute(make_signals(span - 1, 0.0)).lr)
            binding = f"{OWNER}.t_initial" + (" (with its cycles)" if self.cycle_limit > 1 else "")
            fix = f"bind {OWNER}.t_initial = None (one cycle over the run) or change it"
            end = f"lr_min = {self.lr_min:g}"
            warnings += length_warning(binding, min(length, 2**62), span, name, end, last, fix)
        return warnings

    def compute(self, signals: Signals) -> ControllerOutput:
        if self.t_initial is None:
            run_length(OWNER, "t_initial", None, None, 1)  # raises: the run's length is unknown
        step = tf.cast(signals.step, tf.int64)
        t = tf.cast(step, tf.float64)
        warming = step < self.warmup_t
        if self.warmup_t:
            slope = (self.base_lr - self.warmup_lr_init) / self.warmup_t
            warm = self.warmup_lr_init + t * slope
        else:
            warm = tf.constant(self.base_lr, tf.float64)
        u = step - self.warmup_t if self.warmup_prefix else step
        u = tf.maximum(u, 0)  # only negative inside the warmup, where it is not used
        cycle, t_cycle, t_curr, gamma = self._cycle(u)
        k = self.k_decay
        ratio = (math.pi * t_curr) / t_cycle if k == 1.0 else (
            (math.pi * tf.pow(t_curr, k)) / tf.pow(t_cycle, k)
        )  # fmt: skip
        lr_max = self.base_lr * gamma
        cosine = self.lr_min + 0.5 * (lr_max - self.lr_min) * (1.0 + tf.cos(ratio))
        lr = tf.where(cycle < self.cycle_limit, cosine, tf.constant(self.lr_min, tf.float64))
        lr = tf.where(warming, warm, lr)
        noise = self._noise(step)
        lr = lr + lr * noise
        lr = tf.where(step == 0, tf.constant(self.initial_lr, tf.float64), lr)
        diagnostics = {
            "cycle": tf.cast(tf.minimum(cycle, self.cycle_limit), tf.float32),
            "warmup": tf.cast(warming, tf.float32),
            "noise": tf.cast(noise, tf.float32),
        }
        return ControllerOutput(tf.cast(lr, tf.float32), diagnostics)

    def _cycle(self, u: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """For int64 `u` (batches since the cycles began): the cycle index (int64, at
        least `cycle_limit` past the last), its length, the batches into it and its
        peak factor `cycle_decay**i`, float64 as timm computes them."""
        if self.cycle_mul == 1.0:
            cycle = u // self.t_initial
            t_curr = tf.cast(u - self.t_initial * cycle, tf.float64)
            gamma = tf.pow(tf.constant(self.cycle_decay, tf.float64), tf.cast(cycle, tf.float64))
            return cycle, tf.constant(float(self.t_initial), tf.float64), t_curr, gamma
        (starts, lengths, offsets, gammas), done = self._cycle_tables()
        cycle = tf.reduce_sum(tf.cast(starts <= u, tf.int64))
        if done is not None:  # past the total of cycle_mul < 1 cycles (timm raises)
            cycle = tf.where(u >= done, tf.constant(self.cycle_limit, tf.int64), cycle)
        index = tf.minimum(cycle, lengths.shape[0] - 1)
        t_curr = tf.maximum(tf.cast(u, tf.float64) - tf.gather(offsets, index), 0.0)
        return cycle, tf.gather(lengths, index), t_curr, tf.gather(gammas, index)

    @tf.autograph.experimental.do_not_convert  # host work: AutoGraph only slows it
    def _cycle_tables(self) -> tuple[tuple[tf.Tensor, ...], int | None]:
        """The cycles' first steps (int64, from cycle 1) and, per cycle from 0, `T_i`,
        its start as timm subtracts it, and `cycle_decay**i` (float64), computed with
        timm's own Python floats; and the first step past all cycles (`cycle_mul < 1`)
        or None. Cached per run length."""
        horizon = self.run_span[0] or _NO_HORIZON
        key = ("cycles", self.t_initial, horizon)
        cached = self.__dict__.get("_cycle_cache")
        if cached is None or cached[0] != key:
            starts, done = _cycle_starts(self.t_initial, self.cycle_mul, self.cycle_limit, horizon)
            m, t_initial = self.cycle_mul, self.t_initial
            rows = [
                (m**i * t_initial, (1 - m**i) / (1 - m) * t_initial, self.cycle_decay**i)
                for i in range(len(starts) + 1)
            ]
            with tf.init_scope():  # eager constants, captured by the traced step
                columns = [tf.constant(column, tf.float64) for column in zip(*rows, strict=True)]
                tables = (tf.constant(starts, tf.int64, shape=[len(starts)]), *columns)
            cached = (key, (tables, done))
            object.__setattr__(self, "_cycle_cache", cached)
        return cached[1]

    def _noise(self, step: tf.Tensor) -> tf.Tensor:
        """timm's noise `n` of batch `step` (float64; 0 outside the window)."""
        if self.noise_window is None:
            return tf.constant(0.0, tf.float64)
        first, table = self._noise_table()
        if table.shape[0] == 0:
            return tf.constant(0.0, tf.float64)
        index = step - first
        inside = (index >= 0) & (index < table.shape[0])
        value = tf.gather(table, tf.clip_by_value(index, 0, table.shape[0] - 1))
        return tf.where(inside, value, tf.constant(0.0, tf.float64))

    def _noise_range(self) -> tuple[int, int]:
        """The first noisy batch and the end of the ones to draw: the window, cut at the
        run's end when it is known (an open window ends there)."""
        start, end = self.noise_window
        steps = self.run_span[0]
        if end is None and steps is None:
            raise ValueError(
                f"{OWNER}.noise_range_t = {start} (noise from batch {start} on) needs "
                f"the run's length, which is unknown (Keras fit, or the controller used "
                f"without a Trainer); bind {OWNER}.noise_range_t = ({start}, <end batch>), "
                f"or call set_run_length(steps) first"
            )
        end = steps if end is None else end if steps is None else min(end, steps)
        first = max(start, 1)  # batch 0 trains at the LR set at construction, noise-free
        if end - first > MAX_NOISE_STEPS:
            raise ValueError(
                f"{OWNER}.noise_range_t spans {end - first:,} noisy batches, more than "
                f"{MAX_NOISE_STEPS:,} (drawn before training, 20-45 us each); end the "
                f"window earlier with {OWNER}.noise_range_t = (start, end)"
            )
        return first, end

    @tf.autograph.experimental.do_not_convert  # host work: AutoGraph only slows it
    def _noise_table(self) -> tuple[int, tf.Tensor]:
        """The first noisy batch and the noise of every batch to draw (float64), drawn
        once per range."""
        first, end = self._noise_range()
        key = ("noise", first, end)
        cached = self.__dict__.get("_noise_cache")
        if cached is None or cached[0] != key:
            values = timm_noise_table(first, end, *self.noise)
            with tf.init_scope():  # an eager constant, captured by the traced step
                cached = (key, (first, tf.constant(values, tf.float64)))
            object.__setattr__(self, "_noise_cache", cached)
        return cached[1]


def _noise_window(noise_range_t: object) -> tuple[int, int | None] | None:
    """`noise_range_t` as the integer batches `(first, end)` with `first <= t < end`
    (end None: the run's end); timm compares `t` with the numbers themselves."""
    if noise_range_t is None:
        return None
    bounds = list(noise_range_t) if isinstance(noise_range_t, (list, tuple)) else [noise_range_t]
    if len(bounds) not in (1, 2):
        raise ValueError(
            f"{OWNER}.noise_range_t must be None, a batch index or a pair (start, end), "
            f"got {noise_range_t!r}"
        )
    for bound in bounds:
        check_number(OWNER, "noise_range_t", bound)
        if bound < 0:
            raise ValueError(f"{OWNER}.noise_range_t must be >= 0, got {noise_range_t!r}")
    if len(bounds) == 2 and not bounds[0] < bounds[1]:
        raise ValueError(f"{OWNER}.noise_range_t = (start, end) needs start < end, got {bounds}")
    start = math.ceil(bounds[0])
    return (start, math.ceil(bounds[1])) if len(bounds) == 2 else (start, None)


def timm_cycle_index(u: int, t_initial: int, cycle_mul: float) -> float:
    """timm's cycle index of `u` for `cycle_mul != 1`, in its own float arithmetic (inf
    where timm's `math.log` raises: past the total of `cycle_mul < 1` cycles)."""
    x = 1 - u / t_initial * (1 - cycle_mul)
    return math.floor(math.log(x, cycle_mul)) if x > 0 else math.inf


def _cycle_starts(
    t_initial: int, cycle_mul: float, cycle_limit: int, horizon: int
) -> tuple[list[int], int | None]:
    """The first `u` of cycles 1, 2, ... by `timm_cycle_index` (the float boundary near
    the exact one; at most `cycle_limit` of them, none past `horizon`), and the first
    `u` past the finite total of `cycle_mul < 1` cycles (None if not reached)."""
    starts: list[int] = []
    for n in range(1, cycle_limit + 1):
        try:
            exact = t_initial * (cycle_mul**n - 1) / (cycle_mul - 1)
        except OverflowError:
            break
        if exact > horizon + 1:
            break
        if n > MAX_CYCLES:
            raise ValueError(
                f"{OWNER}.cycle_mul = {cycle_mul} makes more than {MAX_CYCLES:,} cycles "
                f"within the run; lower {OWNER}.cycle_limit or move cycle_mul away from 1"
            )
        previous = starts[-1] if starts else 0
        u = max(previous, math.floor(exact) - 1)
        while u > previous and timm_cycle_index(u - 1, t_initial, cycle_mul) >= n:
            u -= 1
        while timm_cycle_index(u, t_initial, cycle_mul) < n:
            u += 1
        if timm_cycle_index(u, t_initial, cycle_mul) == math.inf:
            return starts, u  # every later cycle starts here too: all are over
        starts.append(u)
    return starts, None
