"""One frozen configuration across workloads: the tuning-free methods against a frozen
AdamW + warmup-cosine, scored as AlgoPerf's self-tuning track scores (Kasimbeg et al.
2025, "How far away are truly hyperparameter-free learning algorithms?", arXiv
2505.24005); written to `docs/results-frozen-config.md` (+ `.csv`, `.png`).

Every tuning-free method lrresearch has (`frozen_methods.METHODS`) runs on every
built-in workload (`frozen_methods.workloads`) twice: (a) with its published defaults
and (b) with its one knob calibrated on the digits MLP (seed 0, the published value
times 0.1, 0.3, 1, 3, 10) and then frozen everywhere. The baseline is AdamW +
warmup-cosine (10% warmup): tuned per workload by `lrresearch tune` over a grid of peaks
(seed 0, `frozen_tuning`; "the best tuned baseline"), and frozen at the peak tuned on
the digits MLP. Seeds 0, 1, 2.
Scoring: `frozen_scoring`.

Resumable: each finished run's result is a JSON file under `<logdir>/cache/` keyed by
its gin file, bindings and seed; a second invocation trains only what is missing, and
`--page_only` writes the page from the cache without training. `--deadline HH:MM`
(UTC) submits no run after that time. Runs go to `--jobs` worker processes with one
TensorFlow thread each.

Run: `python tools/frozen_config.py --jobs 2` (several hours of one core: the page
states the measured cost of what ran and of what is left); `--quick` runs a tenth of
the batches and one seed into `runs/frozen_config_quick` and only prints.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import frozen_methods as fm
import frozen_tuning
from frozen_scoring import final_metric
from measured_page import REPO
from train_in_pool import init_worker

SEEDS = (0, 1, 2)
BASELINE = "AdamW + warmup-cosine"  # the labels of both baselines start so
TUNED = f"{BASELINE}, tuned per workload"


class Job(NamedTuple):
    """One run: a workload (key of `workloads`), its full bindings, a seed; `phase` -1
    for the baseline's grid (trained by `lrresearch tune`, `frozen_tuning`), 0 for the
    calibration grids, 1 for the scored runs (priority)."""

    workload: str
    params: tuple[str, ...]
    seed: int
    phase: int


def job_key(gin_file: str, params: Sequence[str], seed: int) -> str:
    """The cache key of a run: a hash of its gin file, bindings and seed."""
    text = json.dumps([gin_file, list(params), seed])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def train_one(gin_file: str, params: tuple[str, ...], seed: int, logdir: str, tag: str) -> dict:
    """Trains one run in a pool worker and reads `tag`'s last event back with
    TensorBoard's loader: `{"step", "value", "run_dir", "seconds"}` (`value` NaN and
    `diverged` set if the run stopped on a non-finite loss)."""
    import gin
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    from lrresearch.config import parse as config
    from lrresearch.training.outer_loop import NonFiniteLossError
    from lrresearch.training.trainer import Trainer

    start = time.perf_counter()
    config.parse([gin_file], [*params, f"Trainer.seed = {seed}"])
    try:
        run_dir = Trainer().fit(logdir=logdir, quiet=True).run_dir
    except NonFiniteLossError as e:
        return {
            "step": -1,
            "value": math.nan,
            "run_dir": "",
            "diverged": str(e)[:300],
            "seconds": time.perf_counter() - start,
        }
    finally:
        gin.clear_config()
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    last = acc.Tensors(tag)[-1]
    return {
        "step": int(last.step),
        "value": float(tf.make_ndarray(last.tensor_proto)),
        "run_dir": os.path.relpath(run_dir, REPO),
        "seconds": time.perf_counter() - start,
    }


class Study:
    """The plan (which runs, decided from the results so far) and the results cache."""

    def __init__(self, quick: bool, logdir: str, methods: Sequence[fm.Method]):
        self.ws, self.methods, self.logdir = fm.workloads(quick), list(methods), logdir
        self.seeds = SEEDS[:1] if quick else SEEDS
        self.cache = os.path.join(logdir, "cache")
        os.makedirs(self.cache, exist_ok=True)
        self.results: dict[str, dict] = {}
        for name in os.listdir(self.cache):
            with open(os.path.join(self.cache, name)) as f:
                self.results[name.removesuffix(".json")] = json.load(f)

    def key(self, job: Job) -> str:
        return job_key(self.ws[job.workload].gin_file, job.params, job.seed)

    def save(self, job: Job, record: dict) -> None:
        record = {
            **record,
            "workload": job.workload,
            "params": list(job.params),
            "seed": job.seed,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        path = os.path.join(self.cache, self.key(job) + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)  # a killed write never leaves half a record
        self.results[self.key(job)] = record

    def job(self, workload: str, bindings: Sequence[str], seed: int, phase: int = 1) -> Job:
        return Job(workload, (*self.ws[workload].params, *bindings), seed, phase)

    def metric(self, job: Job) -> float | None:
        """The scored metric of a finished run (`inf` if it diverged), else None."""
        record = self.results.get(self.key(job))
        if record is None:
            return None
        w = self.ws[job.workload]
        return final_metric(record["value"], w.higher_is_better)

    def _pick(self, jobs: Mapping[float, Job], closest_to: float) -> float | None:
        """The grid value with the lowest seed-0 metric (ties: the one nearest
        `closest_to` in log scale); None until every grid run has finished."""
        scores = {v: self.metric(j) for v, j in jobs.items()}
        if any(s is None for s in scores.values()):
            return None
        return min(scores, key=lambda v: (scores[v], abs(math.log(v / closest_to))))

    def calibration_grid(self, m: fm.Method) -> dict[float, Job]:
        return {
            m.default * f: self.job(fm.CALIBRATION, m.bindings(m.default * f), 0, 0)
            for f in fm.FACTORS
        }

    def baseline_peaks(self, workload: str) -> tuple[float, ...]:
        return fm.LM_BASELINE_GRID if workload == "lm" else fm.BASELINE_GRID

    def baseline_grid(self, workload: str) -> dict[float, Job]:
        """The seed-0 runs of the baseline's peaks: `lrresearch tune`'s trials
        (`frozen_tuning`), phase -1 (never trained by the pool)."""
        steps = self.ws[workload].steps
        return {
            p: self.job(workload, fm.baseline(steps, p), 0, -1)
            for p in self.baseline_peaks(workload)
        }

    def tuned_peak(self, workload: str) -> float | None:
        return self._pick(self.baseline_grid(workload), 3e-3)

    def calibrated(self, m: fm.Method) -> float | None:
        return self._pick(self.calibration_grid(m), m.default)

    def configurations(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """`{label: {workload: bindings}}` of every scored configuration decided so far
        (the frozen ones once their calibration grid has finished)."""
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        tuned = {w: self.tuned_peak(w) for w in self.ws}
        out[TUNED] = {
            w: fm.baseline(self.ws[w].steps, p) for w, p in tuned.items() if p is not None
        }
        frozen = tuned[fm.CALIBRATION]
        if frozen is not None:
            out[f"{BASELINE}, frozen (peak {frozen:g})"] = {
                w: fm.baseline(self.ws[w].steps, frozen) for w in self.ws
            }
        for m in self.methods:
            out[f"{m.label}, published ({m.knob} {m.default:g})"] = {
                w: m.bindings(m.default) for w in self.ws
            }
            value = self.calibrated(m)
            if value is not None:
                same = " = published" if value == m.default else ""
                out[f"{m.label}, frozen ({m.knob} {value:.3g}{same})"] = {
                    w: m.bindings(value) for w in self.ws
                }
        return out

    def plan(self) -> list[Job]:
        """Every run known to be needed so far, without repeats, highest priority
        first: the grids, then the cheap workloads' seeds, then the transformer's."""
        jobs = [j for m in self.methods for j in self.calibration_grid(m).values()]
        jobs += [j for w in self.ws for j in self.baseline_grid(w).values()]
        for by_workload in self.configurations().values():
            jobs += [self.job(w, b, s) for w, b in by_workload.items() for s in self.seeds]
        order = list(self.ws)
        jobs.sort(key=lambda j: (j.phase, j.workload == "lm", j.seed, order.index(j.workload)))
        seen: set[str] = set()  # a run in two roles (a grid point and a config) runs once
        return [j for j in jobs if not (self.key(j) in seen or seen.add(self.key(j)))]

    def missing(self) -> list[Job]:
        return [j for j in self.plan() if self.key(j) not in self.results]


def run(study: Study, jobs: int, deadline: float | None) -> None:
    """Trains the missing runs, `jobs` at a time, re-planning after each finished run
    (a finished grid decides new runs); submits nothing after `deadline` (epoch s)."""
    context = multiprocessing.get_context("spawn")
    pool = futures.ProcessPoolExecutor(
        jobs, context, initializer=init_worker, max_tasks_per_child=25
    )
    inflight: dict[futures.Future, Job] = {}
    failed: set[str] = set()
    while True:
        busy = {study.key(j) for j in inflight.values()} | failed
        todo = [j for j in study.missing() if j.phase >= 0 and study.key(j) not in busy]
        if deadline is not None and time.time() > deadline:
            todo = []
        while len(inflight) < jobs and todo:
            job = todo.pop(0)
            w = study.ws[job.workload]
            future = pool.submit(train_one, w.gin_file, job.params, job.seed, study.logdir, w.tag)
            inflight[future] = job
        if not inflight:
            break
        done, _ = futures.wait(inflight, return_when=futures.FIRST_COMPLETED)
        for future in done:
            job = inflight.pop(future)
            try:
                record = future.result()
            except Exception as e:  # a bug, not a divergence: not cached, reported
                failed.add(study.key(job))
                print(f"FAILED {job.workload} seed {job.seed} {job.params[-4:]}: {e!r}")
                continue
            study.save(job, record)
            left = len(study.missing())
            print(
                f"{job.workload:12s} seed {job.seed} {record['value']:.4f} "
                f"{record['seconds']:5.0f} s  ({left} runs left) {job.params[-1]}",
                flush=True,
            )
    pool.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the batches, 1 seed")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--logdir", default=None, help="default: runs/frozen_config[_quick]")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: submit no run after")
    parser.add_argument("--page_only", action="store_true", help="write the page, train nothing")
    parser.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    args = parser.parse_args()
    logdir = args.logdir or os.path.join(
        REPO, "runs", "frozen_config_quick" if args.quick else "frozen_config"
    )
    chosen = args.methods.split(",") if args.methods else None
    methods, absent = fm.available([m for m in fm.METHODS if not chosen or m.label in chosen])
    study = Study(args.quick, logdir, methods)
    start = time.perf_counter()
    if not args.page_only:
        deadline = None
        if args.deadline:
            hour, minute = map(int, args.deadline.split(":"))
            now = datetime.datetime.now(datetime.UTC)
            deadline = now.replace(hour=hour, minute=minute, second=0).timestamp()
        frozen_tuning.tune_all(study, args.jobs)
        print(f"{len(study.missing())} runs missing of {len(study.plan())} planned so far")
        run(study, args.jobs, deadline)
    else:
        frozen_tuning.tune_all(study, args.jobs, train=False)
    from frozen_page import write

    write(study, absent, args.jobs, time.perf_counter() - start, page=not args.quick)


if __name__ == "__main__":
    main()
