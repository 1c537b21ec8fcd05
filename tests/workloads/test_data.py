"""Built-in datasets and the `.npz` loader."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from lrresearch.workloads.data import (
    BatchSampler,
    DataError,
    Dataset,
    DataWarning,
    digits,
    npz_file,
    synthetic,
)
from tests.support import run_cli


def test_digits_shapes_range_and_split():
    data = digits()
    assert isinstance(data, Dataset)
    n_total = 1797  # scikit-learn's digits
    assert len(data.x_eval) == round(0.2 * n_total)
    assert len(data.x_train) + len(data.x_eval) == n_total
    for x, y in ((data.x_train, data.y_train), (data.x_eval, data.y_eval)):
        assert x.shape == (len(y), 8, 8, 1)
        assert x.dtype == np.float32
        assert y.dtype == np.int32 and y.ndim == 1
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert data.x_train.max() == 1.0  # 16/16: scaled, not clipped
    assert data.num_classes == 10
    assert set(np.unique(data.y_train)) == set(range(10))
    assert set(np.unique(data.y_eval)) == set(range(10))
    assert data.input_shape == (8, 8, 1)
    other = digits(eval_fraction=0.5)
    assert len(other.x_eval) == round(0.5 * n_total)


def test_digits_split_is_a_permutation_of_the_source():
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = digits(seed=3)
    x = np.concatenate([data.x_train, data.x_eval]).reshape(-1, 64) * 16.0
    y = np.concatenate([data.y_train, data.y_eval])
    # Same multiset of (image, label) rows as the source.
    got = sorted(map(tuple, np.column_stack([x, y]).round().astype(int)))
    want = sorted(map(tuple, np.column_stack([raw.data, raw.target]).astype(int)))
    assert got == want


def class_ratio(labels: np.ndarray, num_classes: int) -> float:
    counts = np.bincount(labels, minlength=num_classes)
    return counts[0] / counts[num_classes - 1]


@pytest.mark.parametrize(("imbalance", "num_classes"), [(10.0, 4), (20.0, 5), (1.0, 3)])
def test_synthetic_imbalance_ratio(imbalance, num_classes):
    data = synthetic(
        num_examples=40000, num_classes=num_classes, imbalance=imbalance, label_noise=0.0, seed=1
    )
    labels = np.concatenate([data.y_train, data.y_eval])
    assert class_ratio(labels, num_classes) == pytest.approx(imbalance, rel=0.15)
    counts = np.bincount(labels, minlength=num_classes)
    if imbalance > 1:
        assert np.all(np.diff(counts) < 0)  # most frequent first, decreasing
    # Eval labels stay clean even with noise: the ratio holds there too.
    noisy = synthetic(
        num_examples=40000, num_classes=num_classes, imbalance=imbalance, label_noise=0.5, seed=1
    )
    assert class_ratio(noisy.y_eval, num_classes) == pytest.approx(imbalance, rel=0.3)


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_synthetic_label_noise_fraction(noise):
    k = 4
    clean = synthetic(num_examples=20000, num_classes=k, label_noise=0.0, seed=5)
    noisy = synthetic(num_examples=20000, num_classes=k, label_noise=noise, seed=5)
    # Same features and eval split; only training labels change.
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    np.testing.assert_array_equal(clean.x_eval, noisy.x_eval)
    np.testing.assert_array_equal(clean.y_eval, noisy.y_eval)
    changed = np.mean(clean.y_train != noisy.y_train)
    # A noisy label is redrawn uniformly, so it lands on the true class 1/k of the time.
    assert changed == pytest.approx(noise * (k - 1) / k, abs=0.015)
    assert noisy.y_train.dtype == np.int32
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < k


def test_synthetic_shapes_and_determinism():
    a = synthetic(num_examples=1000, num_features=7, num_classes=3, seed=2)
    b = synthetic(num_examples=1000, num_features=7, num_classes=3, seed=2)
    c = synthetic(num_examples=1000, num_features=7, num_classes=3, seed=4)
    assert a.x_train.shape == (800, 7) and a.x_eval.shape == (200, 7)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert a.num_classes == 3 and a.input_shape == (7,)
    for field in ("x_train", "y_train", "x_eval", "y_eval"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_class_separation_makes_classes_learnable():
    data = synthetic(
        num_examples=4000,
        num_features=10,
        num_classes=3,
        imbalance=1.0,
        label_noise=0.0,
        class_separation=6.0,
        seed=0,
    )
    # Nearest class mean (estimated on train) classifies well-separated clusters.
    means = np.stack([data.x_train[data.y_train == k].mean(0) for k in range(3)])
    dist = ((data.x_eval[:, None, :] - means[None]) ** 2).sum(-1)
    assert np.mean(dist.argmin(1) == data.y_eval) > 0.95


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"imbalance": 0.5}, "imbalance"),
        ({"label_noise": 1.5}, "label_noise"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(DataError, match=needle):
        synthetic(num_examples=100, **kwargs)


# -- npz_file -------------------------------------------------------------------------------


def save(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def refusal(path: str, **kwargs) -> str:
    """The message of the DataError `npz_file(path, **kwargs)` raises."""
    with pytest.raises(DataError) as info:
        npz_file(path, **kwargs)
    return str(info.value)


def test_npz_file_loads_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 2)).astype(np.float64)
    y = np.arange(50) % 3
    data = npz_file(save(tmp_path, x=x, y=y), eval_fraction=0.2, seed=1)
    assert data.num_classes == 3
    assert data.x_train.shape == (40, 3, 2) and data.x_eval.shape == (10, 3, 2)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert data.name == "data.npz"
    # The split is a permutation of the rows, with labels kept with their features.
    both_x = np.concatenate([data.x_train, data.x_eval])
    both_y = np.concatenate([data.y_train, data.y_eval])
    order = np.argsort(both_x[:, 0, 0])
    ref = np.argsort(x[:, 0, 0].astype(np.float32))
    np.testing.assert_allclose(both_x[order], x[ref].astype(np.float32))
    np.testing.assert_array_equal(both_y[order], y[ref])


def test_npz_file_uses_given_eval_split_and_num_classes(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 2
    x_eval = np.ones((5, 2), np.int64)
    y_eval = np.array([0, 1, 2, 0, 1])
    path = save(tmp_path, x=x, y=y, x_eval=x_eval, y_eval=y_eval)
    data = npz_file(path)
    np.testing.assert_array_equal(data.x_train, x)
    np.testing.assert_array_equal(data.y_train, y)
    np.testing.assert_array_equal(data.x_eval, x_eval.astype(np.float32))
    np.testing.assert_array_equal(data.y_eval, y_eval)
    assert data.num_classes == 3  # max over train and eval labels, plus one
    assert data.x_eval.dtype == np.float32 and data.y_eval.dtype == np.int32
    assert npz_file(path, num_classes=7).num_classes == 7


GOOD_X = np.zeros((6, 2), np.float32)
GOOD_Y = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize(
    ("arrays", "kwargs", "needles"),
    [
        ({"x": GOOD_X}, {}, ["'y'", "missing"]),
        ({"y": GOOD_Y}, {}, ["'x'", "missing"]),
        ({"x": np.zeros(6, np.float32), "y": GOOD_Y}, {}, ["'x'", "shape", "(6,)"]),
        ({"x": GOOD_X, "y": GOOD_Y.reshape(6, 1)}, {}, ["'y'", "shape", "(6, 1)"]),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, {}, ["'y'", "integer", "float32"]),
        ({"x": GOOD_X, "y": GOOD_Y[:5]}, {}, ["'x'", "6", "'y'", "5"]),
        ({"x": GOOD_X, "y": np.array([0, 1, 2, 3, 4, 1])}, {"num_classes": 3}, ["[0, 3)", "4"]),
        ({"x": GOOD_X, "y": np.array([0, -1, 0, 1, 0, 1])}, {}, ["labels", "-1"]),
        ({"x": np.array([[0.0, 1.0]] * 5 + [[np.nan, 0.0]]), "y": GOOD_Y}, {}, ["'x'", "NaN"]),
        ({"x": GOOD_X, "y": GOOD_Y, "x_eval": GOOD_X}, {}, ["'x_eval'", "'y_eval'"]),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_eval": GOOD_X, "y_eval": GOOD_Y[:4]},
            {},
            ["'x_eval'", "'y_eval'", "4"],
        ),
        ({"x": np.zeros((0, 2), np.float32), "y": np.zeros(0, np.int64)}, {}, []),
    ],
    ids=[
        "no-y",
        "no-x",
        "x-1d",
        "y-2d",
        "y-float",
        "lengths",
        "label-range",
        "negative",
        "nan-x",
        "x_eval-alone",
        "eval-lengths",
        "empty",
    ],
)
def test_npz_file_rejects_bad_files_with_clear_errors(tmp_path, arrays, kwargs, needles):
    path = save(tmp_path, **arrays)
    message = refusal(path, **kwargs)
    assert path in message  # says which file
    for needle in needles:
        assert needle in message, (needle, message)


def test_npz_file_missing_or_unreadable(tmp_path):
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="no such file") as info:
        npz_file(missing)
    assert missing in str(info.value)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match=r"not a readable \.npz") as info:
        npz_file(str(garbage))
    assert str(garbage) in str(info.value)


def digit_like_labels(n: int = 40) -> np.ndarray:
    return np.arange(n) % 10


@pytest.mark.parametrize("where", ["y", "y_eval"])
def test_npz_file_refuses_a_typo_label_that_would_build_a_huge_model(tmp_path, where):
    arrays = {"x": np.zeros((40, 2)), "y": digit_like_labels()}
    arrays["x_eval"], arrays["y_eval"] = np.zeros((12, 2)), np.arange(12) % 10
    arrays[where][7] = 100000
    path = save(tmp_path, **arrays)
    message = refusal(path)
    for needle in [
        path,
        "100,001-class",
        "99,990 classes have no example",
        f"Outlying labels: 100000 (1 example, first {where}[7])",
        "np.unique(y, return_inverse=True)",
        "npz_file.num_classes = 100001",
    ]:
        assert needle in message, (needle, message)
    # The documented way to keep empty classes on purpose.
    assert npz_file(path, num_classes=100001).num_classes == 100001


def test_npz_file_lists_the_outlying_labels_above_the_dense_ones(tmp_path):
    y = digit_like_labels()
    y[[3, 4, 9]] = [500, 70, 500]
    message = refusal(save(tmp_path, x=np.zeros((40, 2)), y=y))
    assert "Outlying labels: 70 (1 example, first y[4]), 500 (2 examples, first y[3])" in message


def test_npz_file_accepts_a_few_empty_classes(tmp_path):
    y = np.array([0, 1, 2, 4, 6] * 4)  # classes 3 and 5 have no example: legitimate
    data = npz_file(save(tmp_path, x=np.zeros((20, 2)), y=y))
    assert data.num_classes == 7


@pytest.mark.parametrize("key", ["x", "x_eval"])
def test_npz_file_refuses_values_that_overflow_float32(tmp_path, key):
    arrays = {"x": np.ones((20, 3)), "y": np.arange(20) % 2}
    arrays["x_eval"], arrays["y_eval"] = np.ones((6, 3)), np.arange(6) % 2
    arrays[key][4, 2] = -1e39  # finite in float64, -inf in float32
    path = save(tmp_path, **arrays)
    message = refusal(path)
    for needle in [
        path,
        f"{key!r}",
        "beyond float32's range",
        f"{key}[4, 2] = -1e+39 (float64)",
        "standardize",
    ]:
        assert needle in message, (needle, message)


def test_npz_file_warns_about_values_whose_float32_square_overflows(tmp_path):
    x = np.ones((20, 3))
    x[2, 1] = 1e20  # 1e40 squared: inf in float32
    path = save(tmp_path, x=x, y=np.arange(20) % 2)
    with pytest.warns(DataWarning, match=r"'x' .* square overflows .* x\[2, 1\] = 1e\+20"):
        data = npz_file(path)
    assert np.isfinite(data.x_train).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x[2, 1] = 1e18  # its square fits
        npz_file(save(tmp_path, name="fine.npz", x=x, y=np.arange(20) % 2))


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_cli_refuses_a_typo_label_with_exit_2(tmp_path):
    y = digit_like_labels(200)
    y[17] = 100000
    path = save(tmp_path, x=np.random.default_rng(0).normal(size=(200, 4)), y=y)
    proc = run_cli(
        "train",
        "--gin_param=Trainer.dataset = @npz_file",
        f"--gin_param=npz_file.path = '{path}'",
        f"--logdir={tmp_path / 'runs'}",
        "--quiet",
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Outlying labels: 100000 (1 example, first y[17])" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- BatchSampler (the trainer's in-graph input pipeline) ----------------------------------------


def sampler_batches(sampler, count: int) -> list[np.ndarray]:
    """The example ids of the next `count` batches (x holds each example's id)."""
    out = []
    for _ in range(count):
        x, y = sampler.next()
        ids = np.asarray(x)[:, 0].astype(int)
        np.testing.assert_array_equal(np.asarray(y), ids % 3)  # labels stay with features
        out.append(ids)
    return out


def id_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n, dtype=np.float32)[:, None], (np.arange(n) % 3).astype(np.int32)


def test_batch_sampler_epochs_visit_each_example_once_and_drop_the_remainder():
    x, y = id_data(10)
    sampler = BatchSampler(x, y, batch_size=3, seed=0)
    epochs = [sampler_batches(sampler, 3) for _ in range(4)]
    for batches in epochs:
        assert all(len(b) == 3 for b in batches)
        ids = np.concatenate(batches)
        assert len(set(ids)) == 9 and set(ids) <= set(range(10))  # one example left out
    orders = {tuple(np.concatenate(b)) for b in epochs}
    assert len(orders) > 1  # reshuffled between epochs
    assert int(sampler.epoch.numpy()) == 3


def test_batch_sampler_is_deterministic_by_seed():
    x, y = id_data(50)
    a = np.concatenate(sampler_batches(BatchSampler(x, y, 8, seed=1), 12))
    b = np.concatenate(sampler_batches(BatchSampler(x, y, 8, seed=1), 12))
    c = np.concatenate(sampler_batches(BatchSampler(x, y, 8, seed=2), 12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:48], np.arange(48))  # shuffled, not in file order


def test_batch_sampler_resumes_from_a_checkpoint(tmp_path):
    x, y = id_data(20)
    sampler = BatchSampler(x, y, 6, seed=3)
    sampler_batches(sampler, 5)  # into the second epoch
    path = tf.train.Checkpoint(epoch=sampler.epoch, position=sampler.position).save(
        str(tmp_path / "ckpt")
    )
    expected = sampler_batches(sampler, 7)
    fresh = BatchSampler(x, y, 6, seed=3)
    tf.train.Checkpoint(epoch=fresh.epoch, position=fresh.position).restore(path)
    fresh.restore_order()
    np.testing.assert_array_equal(
        np.concatenate(sampler_batches(fresh, 7)), np.concatenate(expected)
    )


def test_batch_sampler_rejects_batches_larger_than_the_data():
    x, y = id_data(5)
    with pytest.raises(DataError, match="batch_size"):
        BatchSampler(x, y, 6, seed=0)
