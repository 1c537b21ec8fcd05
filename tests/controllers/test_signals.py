"""MovingAverage against a numpy reference of its documented behaviour."""

import numpy as np
import pytest
import tensorflow as tf

from lrresearch import MovingAverage, make_signals
from lrresearch.controllers.signals import global_norm


def moving_average_reference(values, window, kind):
    """Average after each value: non-finite values are skipped, NaN until a finite one.

    "window": mean of the last min(count, window) finite values. "ema": decay
    beta = 1 - 2 / (window + 1), bias-corrected ema_n / (1 - beta**n), n = finite count.
    """
    beta = 1.0 - 2.0 / (window + 1.0)
    finite, ema, out = [], 0.0, []
    for value in np.asarray(values, np.float32):
        if np.isfinite(value):
            finite.append(float(value))
            ema = beta * ema + (1.0 - beta) * float(value)
        n = len(finite)
        if n == 0:
            out.append(np.nan)
        elif kind == "window":
            out.append(np.mean(finite[-window:]))
        else:
            out.append(ema / (1.0 - beta**n))
    return np.array(out)


def noisy_losses(n=500, seed=0):
    """Positive batch losses with NaN/Inf sprinkled in, starting with two bad ones."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.5, 3.0, n).astype(np.float32)
    bad = rng.choice(np.arange(2, n), size=25, replace=False)
    values[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.size)
    values[:2] = [np.nan, np.inf]
    values[100:110] = np.nan  # a run of bad batches longer than the short windows
    return values


CASES = [(1, "window"), (7, "window"), (64, "window"), (1, "ema"), (7, "ema"), (64, "ema")]


@pytest.mark.slow
@pytest.mark.parametrize(("window", "kind"), CASES)
def test_moving_average_matches_reference(window, kind):
    values = noisy_losses()
    average = MovingAverage(window, kind)
    got = np.array([average.update(v).numpy() for v in values])
    expected = moving_average_reference(values, window, kind)
    assert np.all(np.isnan(got[:2]))  # nothing finite seen yet
    assert np.all(np.isfinite(got[2:]))  # a bad batch never poisons the average
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(average.value.numpy(), expected[-1], rtol=1e-5)


@pytest.mark.parametrize("kind", ["window", "ema"])
def test_moving_average_of_first_value_is_that_value(kind):
    average = MovingAverage(window=5, kind=kind)
    assert np.isnan(average.value.numpy())
    np.testing.assert_allclose(average.update(2.5).numpy(), 2.5, rtol=1e-6)
    np.testing.assert_allclose(average.value.numpy(), 2.5, rtol=1e-6)


def test_window_average_uses_only_the_last_window_values():
    average = MovingAverage(window=3, kind="window")
    got = [average.update(v).numpy() for v in [1.0, 2.0, 3.0, 10.0, np.nan, 20.0]]
    np.testing.assert_allclose(got, [1.0, 1.5, 2.0, 5.0, 5.0, 11.0], rtol=1e-6)


def test_ema_follows_span_rule_with_bias_correction():
    average = MovingAverage(window=3, kind="ema")  # beta = 0.5
    got = [average.update(v).numpy() for v in [4.0, np.inf, 0.0, 2.0]]
    # ema: 2, 2, 1, 1.5; corrections 1 - 0.5**n with n = 1, 1, 2, 3.
    np.testing.assert_allclose(got, [4.0, 4.0, 1.0 / 0.75, 1.5 / 0.875], rtol=1e-6)


@pytest.mark.parametrize(("window", "kind"), [(10, "window"), (10, "ema"), (1, "window")])
def test_moving_average_runs_inside_tf_function_traced_once(window, kind):
    values = noisy_losses(n=400, seed=1)
    average = MovingAverage(window, kind)

    @tf.function
    def update(value):
        return average.update(value)

    got = np.array([update(tf.constant(v)).numpy() for v in values])
    assert update.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(got, moving_average_reference(values, window, kind), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"window": 0}, "window"),
        ({"window": -3}, "window"),
        ({"window": 2.0}, "window"),
        ({"window": True}, "window"),
        ({"window": "10"}, "window"),
        ({"kind": "foo"}, "kind"),
        ({"kind": "EMA"}, "kind"),
    ],
)
def test_moving_average_rejects_bad_arguments(kwargs, param):
    with pytest.raises(ValueError, match=rf"\bMovingAverage\.{param}\b"):
        MovingAverage(**kwargs)


def test_make_signals_defaults():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]
    signals = make_signals(7, 1.25, grads=grads)
    assert signals.step.dtype == tf.int64 and int(signals.step) == 7
    np.testing.assert_allclose(signals.global_norm.numpy(), 5.0, rtol=1e-6)
    assert float(signals.loss_ma_short) == float(signals.loss_ma_long) == 1.25
    assert float(make_signals(0, 1.0).global_norm) == 0.0
    explicit = make_signals(0, 1.0, 2.0, grads=grads, loss_ma_short=0.5, loss_ma_long=0.75)
    assert float(explicit.global_norm) == 2.0  # an explicit norm wins over the grads
    assert (float(explicit.loss_ma_short), float(explicit.loss_ma_long)) == (0.5, 0.75)


def test_global_norm_sums_an_embedding_gradients_repeated_rows_first():
    table = tf.Variable(tf.random.stateless_normal([6, 3], seed=[1, 2]))
    with tf.GradientTape() as tape:
        rows = tf.gather(table, [0, 2, 2, 5, 2])  # row 2 looked up three times
        loss = tf.reduce_sum(tf.square(rows) * tf.constant([[1.0], [2.0], [3.0], [4.0], [5.0]]))
    sparse = tape.gradient(loss, table)
    assert isinstance(sparse, tf.IndexedSlices) and sparse.values.shape[0] == 5
    dense = tf.convert_to_tensor(sparse)
    want = np.linalg.norm(np.concatenate([dense.numpy().ravel(), [3.0, 4.0]]))
    got = tf.function(global_norm)([sparse, None, tf.constant([3.0, 4.0])])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert abs(float(tf.linalg.global_norm([sparse, tf.constant([3.0, 4.0])])) - want) > 1e-2
