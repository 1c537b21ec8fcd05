"""Built-in offline datasets and a loader for the user's own `.npz` files.

Every dataset is a `Dataset` of numpy arrays split into train and eval parts; nothing
is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import NamedTuple

import gin
import numpy as np
import tensorflow as tf


class DataError(ValueError):
    """A dataset that cannot be trained on (wrong shapes, dtypes or labels)."""


class Dataset(NamedTuple):
    """Arrays for one classification task.

    Attributes:
      x_train: float32 `[N, *input_shape]`.
      y_train: int32 `[N]`, labels in `[0, num_classes)`.
      x_eval: float32 `[M, *input_shape]`.
      y_eval: int32 `[M]`.
      num_classes: number of classes.
      name: short name, used in messages.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def split(
    x: np.ndarray, y: np.ndarray, eval_fraction: float, seed: int, num_classes: int, name: str
) -> Dataset:
    """Shuffles with `seed` and holds out `eval_fraction` of the examples for eval."""
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"{name}: eval_fraction must be in (0, 1), got {eval_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_eval = max(1, round(len(x) * eval_fraction))
    return Dataset(x[n_eval:], y[n_eval:], x[:n_eval], y[:n_eval], num_classes, name)


@gin.configurable
def digits(eval_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with
    scikit-learn. Images are `[8, 8, 1]`, scaled from 0..16 to 0..1."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = (raw.images.astype(np.float32) / 16.0)[..., np.newaxis]
    return split(x, raw.target.astype(np.int32), eval_fraction, seed, 10, "digits")


@gin.configurable
def synthetic(
    num_examples: int = 4000,
    num_features: int = 20,
    num_classes: int = 4,
    imbalance: float = 10.0,
    label_noise: float = 0.1,
    class_separation: float = 1.5,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Gaussian clusters with class imbalance and label noise.

    Class `k` has prior proportional to `imbalance ** (-k / (num_classes - 1))`, so the
    most frequent class is `imbalance` times more frequent than the rarest. Each class
    mean is a random direction scaled by `class_separation`; features are unit-variance
    Gaussian around it. A fraction `label_noise` of the *training* labels is replaced
    by a uniformly random class (eval labels stay clean, so eval measures the truth).
    """
    if num_classes < 2:
        raise DataError(f"synthetic.num_classes must be >= 2, got {num_classes!r}")
    if imbalance < 1:
        raise DataError(f"synthetic.imbalance must be >= 1, got {imbalance!r}")
    if not 0 <= label_noise <= 1:
        raise DataError(f"synthetic.label_noise must be in [0, 1], got {label_noise!r}")
    rng = np.random.default_rng(seed)
    priors = imbalance ** (-np.arange(num_classes) / (num_classes - 1))
    y = rng.choice(num_classes, size=num_examples, p=priors / priors.sum()).astype(np.int32)
    means = rng.normal(size=(num_classes, num_features))
    means *= class_separation / np.linalg.norm(means, axis=1, keepdims=True)
    x = (means[y] + rng.normal(size=(num_examples, num_features))).astype(np.float32)
    data = split(x, y, eval_fraction, seed, num_classes, "synthetic")
    noisy = rng.random(len(data.y_train)) < label_noise
    y_train = np.where(noisy, rng.integers(0, num_classes, len(noisy)), data.y_train)
    return data._replace(y_train=y_train.astype(np.int32))


@gin.configurable
def npz_file(
    path: str = gin.REQUIRED,
    num_classes: int | None = None,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The user's data from an `.npz` file with arrays `x` (`[N, ...]`, numeric) and
    `y` (`[N]`, integer class labels in `[0, num_classes)`). If the file also holds
    `x_eval` and `y_eval` they are the eval split; otherwise `eval_fraction` of the
    examples are held out. `num_classes` defaults to `max(y) + 1`.

    Refused, naming the array, an example index and the fix: features that are not
    finite as float32 (the dtype the model gets: 1e39 stored as float64 becomes inf),
    and, when `num_classes` is inferred, labels that leave more than half of the
    classes `0..max(y)` without an example (a typo label such as 100000 among 0..9
    would build a 100,001-class model). Features whose float32 square overflows
    (|x| > 1.8e19) give a `DataWarning`.
    """
    if not os.path.isfile(path):
        raise DataError(f"npz_file.path: no such file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as e:
        raise DataError(f"npz_file.path: {path!r} is not a readable .npz file ({e})") from e
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(
                f"{path}: missing array {key!r} (found {sorted(arrays)}); save with "
                "np.savez(path, x=features, y=labels)"
            )
    has_eval = "x_eval" in arrays or "y_eval" in arrays
    pairs = [("x", "y")] + ([("x_eval", "y_eval")] if has_eval else [])
    for xk, yk in pairs:
        if xk not in arrays or yk not in arrays:
            raise DataError(f"{path}: {xk!r} and {yk!r} must be given together")
        _check_pair(path, xk, arrays[xk], yk, arrays[yk])
    labels = {yk: arrays[yk] for _, yk in pairs}
    if num_classes is None:
        num_classes = max(int(y.max()) for y in labels.values()) + 1
        _check_label_density(path, labels, num_classes)
    low = min(int(y.min()) for y in labels.values())
    high = max(int(y.max()) for y in labels.values())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{path}: labels must lie in [0, {num_classes}), found range [{low}, {high}]"
        )
    if num_classes < 2:
        raise DataError(f"{path}: need at least 2 classes, found {num_classes}")
    x, y = _features(path, "x", arrays["x"]), arrays["y"].astype(np.int32)
    name = os.path.basename(path)
    if has_eval:
        x_eval = _features(path, "x_eval", arrays["x_eval"])
        return Dataset(x, y, x_eval, arrays["y_eval"].astype(np.int32), num_classes, name)
    return split(x, y, eval_fraction, seed, num_classes, name)


# The paper's seed and size (`mnist1d.data.get_dataset_args()`'s defaults); the other
# generation arguments are the package's defaults, all of them part of the cache key.
MNIST1D_NUM_SAMPLES = 5000  # the paper's: 4,000 train + 1,000 test (train_split 0.8)
MNIST1D_SEED = 42


@gin.configurable
def mnist1d(
    seed: int = MNIST1D_SEED,
    num_samples: int = MNIST1D_NUM_SAMPLES,
    cache_dir: str | None = None,
) -> Dataset:
    """MNIST-1D (Greydanus 2020, arXiv:2011.14439): 10 one-dimensional "digit"
    templates, padded, translated, sheared, scaled and noised into length-40 signals.

    Generated offline by the `mnist1d` package (`mnist1d.data.make_dataset` with
    `get_dataset_args()`, only `seed` and `num_samples` changed; never
    `mnist1d.get_dataset`, which downloads). With the defaults this is the paper's
    dataset: 5,000 examples, the first 80% (4,000, the package's `x`/`y`) the training
    split and the last 1,000 (`x_test`/`y_test`) the eval split. Features are float32
    `[N, 40]`, standardized over the whole set by the generator; labels int32 in 0..9.

    Generation takes ~10 s, so the arrays are cached as an `.npz` in `cache_dir`
    (default `$XDG_CACHE_HOME/lrresearch`, else `~/.cache/lrresearch`; never the repo),
    named `mnist1d-<mnist1d version>-<hash of the generation arguments>.npz` and written
    atomically (a temporary file, then a rename), so concurrent runs never read half a
    file. Delete the file to regenerate.

    Args:
      seed: the generator's seed (the paper's is 42).
      num_samples: examples in total, a multiple of 10 (equal per class); 80% train.
      cache_dir: where the generated arrays are kept.
    """
    num_samples = int(num_samples)
    if num_samples < 20 or num_samples % 10:
        raise DataError(
            f"mnist1d.num_samples must be a multiple of 10 and >= 20, got {num_samples!r}"
        )
    try:
        import mnist1d.data as mnist1d_data
    except ImportError as e:
        raise DataError(
            "mnist1d needs the `mnist1d` package (pip install mnist1d); it generates the "
            "data offline"
        ) from e
    args = mnist1d_data.get_dataset_args(as_dict=True)
    args.pop("url", None)  # where get_dataset would download from: not a generation argument
    args.update(seed=int(seed), num_samples=num_samples)
    path = os.path.join(_cache_dir(cache_dir), _mnist1d_cache_name(args))
    arrays = _load_npz(path)
    if arrays is None:
        arrays = _generate_mnist1d(mnist1d_data, args)
        _save_npz_atomically(path, arrays)
    return Dataset(
        arrays["x"].astype(np.float32),
        arrays["y"].astype(np.int32),
        arrays["x_test"].astype(np.float32),
        arrays["y_test"].astype(np.int32),
        10,
        "mnist1d",
    )


def _cache_dir(cache_dir: str | None) -> str:
    """`cache_dir`, or the user's cache directory for lrresearch."""
    if cache_dir:
        return os.path.expanduser(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lrresearch")


def _mnist1d_cache_name(args: dict) -> str:
    """The cache file name: the package version and a hash of every generation argument."""
    import hashlib
    import json
    from importlib.metadata import version

    key = json.dumps(args, sort_keys=True, default=repr)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"mnist1d-{version('mnist1d')}-{digest}.npz"


def _generate_mnist1d(mnist1d_data, args: dict) -> dict[str, np.ndarray]:
    """Runs the generator, leaving the global RNGs as they were (it reseeds numpy's and
    Python's global generators)."""
    import random

    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d_data.make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError):
        return None


def _save_npz_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` to a temporary file beside `path`, then renames it into place.
    A cache that cannot be written (read-only home) only costs a regeneration next time."""
    import tempfile

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mnist1d-", suffix=".npz.tmp", dir=directory)
    except OSError as e:
        warnings.warn(f"mnist1d: cannot cache the data in {directory} ({e})", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class DataWarning(UserWarning):
    """Data that can be trained on but probably should not be as they are."""


# Above this magnitude a float32 square is inf: any squared quantity (a squared error,
# a gradient norm, a normalization layer's variance) overflows.
_SQUARE_OVERFLOW = float(np.sqrt(np.finfo(np.float32).max))


def _features(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """`x` as float32, checked finite after the cast (float64 values beyond 3.4e38
    become inf there); warns about values whose float32 square overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        at = _first(bad)
        value = x[at]
        what, fix = (
            ("contains NaN or Inf", "fix or drop those examples")
            if not np.isfinite(value)
            else (
                "holds values beyond float32's range (+-3.4e38), which become inf in the "
                "float32 the model gets",
                "rescale the features (standardize: (x - mean) / std)",
            )
        )
        raise DataError(
            f"{path}: {key!r} {what}: {key}{list(at)} = {value} ({x.dtype}); "
            f"{int(bad.sum())} such value(s). Fix: {fix} and save the file again."
        )
    big = np.abs(x32) > _SQUARE_OVERFLOW
    if big.any():
        at = _first(big)
        warnings.warn(
            f"{path}: {key!r} holds values whose float32 square overflows "
            f"(|x| > {_SQUARE_OVERFLOW:.3g}): {key}{list(at)} = {x[at]}; "
            f"{int(big.sum())} such value(s). A squared error, gradient norm or "
            "normalization there is inf; standardize the features ((x - mean) / std).",
            DataWarning,
            stacklevel=2,
        )
    return x32


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """The index of the first True element of `mask`."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _check_label_density(path: str, labels: dict[str, np.ndarray], num_classes: int) -> None:
    """Refuses inferred classes `0..num_classes-1` of which more than half have no
    example: a few empty classes are legitimate (a rare class missing from a subset),
    a majority means labels that are not class indices or a typo. The outlying labels
    are those above the largest label up to which most classes are present."""
    present = np.unique(np.concatenate([y[y >= 0] for y in labels.values()]))
    if len(present) * 2 >= num_classes:
        return
    # present[i] is the (i+1)-th distinct label: classes 0..present[i] are mostly
    # present while (i + 1) * 2 > present[i] + 1.
    dense = np.flatnonzero((np.arange(len(present)) + 1) * 2 > present + 1)
    cut = int(present[dense[-1]]) if len(dense) else -1
    outliers = present[present > cut]
    listing = ", ".join(_label_place(labels, int(v)) for v in outliers[:5])
    more = f" and {len(outliers) - 5} more" if len(outliers) > 5 else ""
    raise DataError(
        f"{path}: the labels would build a {num_classes:,}-class model (max label "
        f"{num_classes - 1}) in which {num_classes - len(present):,} classes have no "
        f"example (only {len(present)} distinct labels). Outlying labels: {listing}{more}. "
        "Fix those labels, or map the labels to 0..K-1 "
        "(`classes, y = np.unique(y, return_inverse=True)`); if the empty classes are "
        f"intended, set npz_file.num_classes = {num_classes}."
    )


def _label_place(labels: dict[str, np.ndarray], value: int) -> str:
    """`100000 (1 example, first y[17])`."""
    count = sum(int(np.count_nonzero(y == value)) for y in labels.values())
    key, y = next((k, y) for k, y in labels.items() if np.any(y == value))
    first = int(np.argmax(y == value))
    return f"{value} ({count} example{'s' if count > 1 else ''}, first {key}[{first}])"


def _check_pair(path: str, xk: str, x: np.ndarray, yk: str, y: np.ndarray) -> None:
    if x.ndim < 2:
        raise DataError(f"{path}: {xk!r} must have shape [N, features...], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: {xk!r} must be real numbers, got dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{path}: {yk!r} must have shape [N] (class indices), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {yk!r} must hold integer class indices, got dtype {y.dtype}")
    if len(x) != len(y):
        raise DataError(f"{path}: {xk!r} has {len(x)} examples but {yk!r} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: {xk!r} and {yk!r} hold no examples")


class BatchSampler(tf.Module):
    """Shuffled fixed-size batches drawn in-graph from arrays held in variables.

    Epoch `e` visits the examples in the order `stateless_shuffle(range(N), seed=(seed,
    e))`; the last partial batch of each epoch is dropped, so every batch has the same
    shape and the train step is traced once. No `tf.data` iterator: a batch is a slice
    of the permutation and one gather, which on CPU costs a few microseconds where a
    `tf.data` `GetNext` costs ~50 us, and on a GPU the data stay in device memory.
    The state (`epoch`, `position`) is two int64 variables, so a checkpoint records
    where the input pipeline is.

    Args:
      x: `[N, ...]` features.
      y: `[N]` labels.
      batch_size: examples per batch (<= N).
      seed: shuffling seed.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        super().__init__(name="batch_sampler")
        if batch_size > len(x):
            raise DataError(f"batch_size {batch_size} is larger than the {len(x)} examples")
        self.num_examples, self.batch_size, self.seed = len(x), batch_size, seed
        # Data as non-trainable variables: stored once, not embedded in the graph.
        self._x = tf.Variable(x, trainable=False, name="x")
        self._y = tf.Variable(y, trainable=False, name="y")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="position")
        self._order = tf.Variable(
            self._permutation(tf.constant(0, tf.int64)), trainable=False, name="order"
        )

    def _permutation(self, epoch: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
        return tf.random.experimental.stateless_shuffle(
            tf.range(self.num_examples, dtype=tf.int64), seed=seed
        )

    def restore_order(self) -> None:
        """Recomputes the permutation from `epoch` (after restoring a checkpoint)."""
        self._order.assign(self._permutation(self.epoch.read_value()))

    def next(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns the next `(x [batch, ...], y [batch])` and advances the position."""
        new_epoch = self.position + self.batch_size > self.num_examples
        epoch = self.epoch + tf.cast(new_epoch, tf.int64)

        def reshuffle() -> tf.Tensor:
            order = self._permutation(epoch)
            self._order.assign(order)
            return order

        order = tf.cond(new_epoch, reshuffle, self._order.read_value)
        start = tf.where(new_epoch, tf.constant(0, tf.int64), self.position)
        self.epoch.assign(epoch)
        self.position.assign(start + self.batch_size)
        idx = tf.slice(order, tf.reshape(start, [1]), [self.batch_size])
        return tf.gather(self._x, idx), tf.gather(self._y, idx)
