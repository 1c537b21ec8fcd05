"""Summaries: TensorBoard's bucket format, and exact tags in every code path.

TensorBoard's own `summary_v2._buckets` is the reference implementation of the
histogram buckets; the events are read back with TensorBoard's own loader.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.histogram import summary_v2 as tb_histogram

from lrresearch.logs import summaries


def tensorboard_buckets(values, bucket_count=summaries.HISTOGRAM_BUCKETS):
    return tb_histogram._buckets(tf.constant(values), tf.constant(bucket_count)).numpy()


def assert_same_buckets(values, finite_values=None):
    finite_values = values if finite_values is None else finite_values
    got = summaries.histogram_buckets(tf.constant(values)).numpy()
    expected = tensorboard_buckets(finite_values)
    assert got.shape == (summaries.HISTOGRAM_BUCKETS, 3) and got.dtype == np.float64
    np.testing.assert_array_equal(got[:, :2], expected[:, :2], err_msg="edges")
    np.testing.assert_array_equal(got[:, 2], expected[:, 2], err_msg="counts")
    assert got[:, 2].sum() == np.size(finite_values)


@pytest.mark.parametrize("size", [2, 3, 17, 1000, 65_536])
@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_buckets_match_tensorboard_on_random_data(size, seed):
    rng = np.random.default_rng(seed)
    assert_same_buckets((rng.standard_normal(size) * 3 + 1).astype(np.float32))


def test_histogram_buckets_match_tensorboard_for_a_weight_matrix():
    rng = np.random.default_rng(2)
    assert_same_buckets(rng.uniform(-0.1, 0.1, (64, 32)).astype(np.float32))


@pytest.mark.parametrize("shape", [(1,), (100,), (4, 5)])
def test_histogram_buckets_of_a_constant_tensor(shape):
    values = np.full(shape, -2.5, np.float32)
    assert_same_buckets(values)
    got = summaries.histogram_buckets(tf.constant(values)).numpy()
    np.testing.assert_array_equal(got[:, :2], -2.5)  # left = right = the value
    assert got[-1, 2] == np.prod(shape)


@pytest.mark.parametrize("shape", [(0,), (0, 5)])
def test_histogram_buckets_of_an_empty_tensor(shape):
    values = np.zeros(shape, np.float32)
    assert_same_buckets(values)
    np.testing.assert_array_equal(summaries.histogram_buckets(tf.constant(values)), 0.0)


def test_histogram_buckets_drop_non_finite_values():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(2000).astype(np.float32)
    values[rng.choice(2000, 50, replace=False)] = np.nan
    values[:3] = [np.inf, -np.inf, np.nan]
    assert_same_buckets(values, finite_values=values[np.isfinite(values)])


@pytest.mark.parametrize("finite", [[], [1.5], [1.5, 1.5]])
def test_histogram_buckets_with_no_or_one_finite_value(finite):
    values = np.array([np.nan, np.inf, *finite, -np.inf], np.float32)
    assert_same_buckets(values, finite_values=np.array(finite, np.float32))


def test_histogram_buckets_match_tensorboard_for_values_on_bucket_edges():
    # 1.4268643 is exactly the left edge of bucket 15 of [-1.0370176, 3.890746] (float64
    # linspace, as TensorBoard computes the edges). TensorBoard's float64 index
    # floor((x - min) / width) puts it in bucket 14; float32 counting
    # (tf.histogram_fixed_width) in bucket 15. Either way is defensible; ours must agree.
    values = np.array([-1.0370176, 1.4268643, 3.890746], np.float32)
    edges = np.linspace(np.float64(values[0]), np.float64(values[2]), 31)
    assert edges[15] == np.float64(values[1])
    assert_same_buckets(values)


def test_histogram_buckets_match_tensorboard_on_a_million_values():
    # The same edge effect on realistic data: about one value in a million sits within
    # float32 rounding of a bucket edge.
    rng = np.random.default_rng(1)
    assert_same_buckets(rng.standard_normal(1_000_000).astype(np.float32))


def read_events(logdir):
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_summaries_keep_exact_tags_inside_tf_range_loop_and_name_scope(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    rng = np.random.default_rng(4)
    weights = rng.standard_normal((8, 16)).astype(np.float32)

    @tf.function
    def write(values):
        with tf.name_scope("x"):
            for step in tf.range(3, dtype=tf.int64):
                offset = tf.cast(step, tf.float32)
                summaries.scalar("lr", 0.5 * offset + 0.25, step=step)
                summaries.histogram("weights/dense/kernel", values + offset, step=step)
                # Control: the plain API in the same place gets a scope prefix, so this
                # test does exercise the code path that renames tags.
                tf.summary.scalar("plain", offset, step=step)

    with writer.as_default():
        write(tf.constant(weights))
    writer.close()

    acc = read_events(tmp_path)
    tags = set(acc.Tags()["tensors"])
    plain = tags - {"lr", "weights/dense/kernel"}
    assert len(plain) == 1 and next(iter(plain)) != "plain"  # e.g. "x/while/plain"
    assert tags == {"lr", "weights/dense/kernel", *plain}
    assert acc.SummaryMetadata("lr").plugin_data.plugin_name == "scalars"
    assert acc.SummaryMetadata("weights/dense/kernel").plugin_data.plugin_name == "histograms"

    lr_events = acc.Tensors("lr")
    assert [e.step for e in lr_events] == [0, 1, 2]
    np.testing.assert_allclose(
        [tf.make_ndarray(e.tensor_proto) for e in lr_events], [0.25, 0.75, 1.25]
    )
    hist_events = acc.Tensors("weights/dense/kernel")
    assert [e.step for e in hist_events] == [0, 1, 2]
    for event in hist_events:
        np.testing.assert_allclose(
            tf.make_ndarray(event.tensor_proto),
            tensorboard_buckets(weights + np.float32(event.step)),
        )


def test_histogram_respects_record_if(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))

    @tf.function
    def write():
        for step in tf.range(4, dtype=tf.int64):
            with tf.summary.record_if(step % 2 == 0):
                summaries.histogram("h", tf.fill([5], tf.cast(step, tf.float32)), step=step)

    with writer.as_default():
        write()
    writer.close()
    assert [e.step for e in read_events(tmp_path).Tensors("h")] == [0, 2]
