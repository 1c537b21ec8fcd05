"""A run whose `PlateauController` watches `eval/loss`: each evaluation's value reaches
the controller between compiled calls and the next batch acts on it (Keras's rule,
recomputed from the run's event files); a run stopped and resumed keeps best, wait and
cooldown; a monitor the run does not log stops it before anything trains."""

from __future__ import annotations

import numpy as np
import pytest

from lrresearch.controllers import PlateauController
from lrresearch.training.outer_loop import StopRun, TrainingStopped
from tests.support import read_events, small_trainer

STEPS, EVAL_EVERY, STOP_AT = 32, 4, 24
PLATEAU = dict(
    initial_lr=0.5, monitor="eval/loss", patience=1, cooldown=1, factor=0.5, min_delta=0.02
)


def trainer(**kwargs):
    args = dict(
        steps=STEPS, steps_per_loop=8, eval_every=EVAL_EVERY, checkpoint_every=STOP_AT,
        controller=PlateauController(**PLATEAU),
    )  # fmt: skip
    return small_trainer(**{**args, **kwargs})


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run stopped after its evaluation at batch 24 (saved as on Ctrl-C), resumed."""
    logdir = str(tmp_path_factory.mktemp("runs"))

    def stop(done: int, evals: dict) -> None:
        if done == STOP_AT:
            raise StopRun("test")

    with pytest.raises(TrainingStopped):
        trainer().fit(logdir, "plateau", quiet=True, on_eval=stop)
    trainer().fit(logdir, "plateau", quiet=True, resume=True)
    return read_events(f"{logdir}/plateau")


def keras_rule(values, lr, patience, cooldown, factor, min_delta):
    """Keras's `ReduceLROnPlateau.on_epoch_end`, mode min, min_lr 0: the LR after each."""
    best, wait, counter, out = None, 0, 0, []
    for value in values:
        if counter > 0:
            counter, wait = counter - 1, 0
        if best is None or value + min_delta < best:
            best, wait = value, 0
        elif counter == 0:
            wait += 1
            if wait >= patience:
                lr, counter, wait = float(np.float32(lr * factor)), cooldown, 0
        out.append(lr)
    return out


@pytest.mark.slow
def test_each_evaluation_decides_the_next_batch_as_keras_would(resumed):
    events = resumed
    steps, values = events.steps("eval/loss"), events.values("eval/loss").astype(np.float64)
    np.testing.assert_array_equal(steps, np.arange(EVAL_EVERY - 1, STEPS, EVAL_EVERY))
    p = PLATEAU
    after = keras_rule(values, np.float32(p["initial_lr"]), p["patience"], p["cooldown"],
                       p["factor"], p["min_delta"])  # fmt: skip
    want = np.full(STEPS, np.float32(p["initial_lr"]))
    for step, lr in zip(steps, after, strict=True):
        want[step + 1 :] = lr  # from the batch after the evaluation
    np.testing.assert_array_equal(events.scalar("lr"), want)
    reduced = np.flatnonzero(events.scalar("controller/reduced"))
    np.testing.assert_array_equal(reduced, np.flatnonzero(np.diff(want)) + 1)
    # A cut after the resume that needs the best value from before it.
    assert reduced.size and reduced.min() > STOP_AT
    monitored = events.scalar("controller/monitored")
    np.testing.assert_array_equal(monitored[steps[:-1] + 1], values[:-1].astype(np.float32))


@pytest.mark.slow
def test_a_monitor_the_run_does_not_log_stops_it_before_training(tmp_path):
    bad = trainer(controller=PlateauController(monitor="eval/acc"))
    with pytest.raises(ValueError) as error:
        bad.fit(str(tmp_path), "bad", quiet=True)
    message = str(error.value)
    assert message.startswith("PlateauController.monitor = 'eval/acc' is not logged")
    assert "'eval/loss', 'eval/accuracy'" in message
    assert not (tmp_path / "bad").exists()  # nothing written, nothing trained
