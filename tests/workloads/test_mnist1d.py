"""`@mnist1d` (generated offline, cached) and the MNIST-1D paper's models.

A small MNIST-1D (a few hundred examples, generated in well under a second) keeps the
file fast; the generation arguments other than `num_samples` are the paper's."""

from __future__ import annotations

import os
import random

import gin
import keras
import mnist1d.data
import numpy as np
import pytest

from lrresearch.cli import commands as cli
from lrresearch.workloads import data, models
from tests.support import REPO, read_events

SMALL = 500  # examples: 400 train, 100 eval


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("mnist1d_cache"))


def test_mnist1d_is_the_packages_dataset_with_its_split(cache):
    ds = data.mnist1d(num_samples=SMALL, cache_dir=cache)
    assert ds.name == "mnist1d" and ds.num_classes == 10
    assert ds.x_train.shape == (400, 40) and ds.x_eval.shape == (100, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert ds.y_eval.min() >= 0 and ds.y_eval.max() <= 9
    # The package's own x / x_test split, unshuffled.
    args = mnist1d.data.get_dataset_args()
    args.num_samples = SMALL
    ref = mnist1d.data.make_dataset(args)
    np.testing.assert_array_equal(ds.x_train, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, ref["y"])
    np.testing.assert_array_equal(ds.x_eval, ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_eval, ref["y_test"])


def test_mnist1d_second_call_reads_the_cache(cache, monkeypatch):
    first = data.mnist1d(num_samples=SMALL, cache_dir=cache)
    files = [f for f in os.listdir(cache) if f.endswith(".npz")]
    assert files and all(f.startswith("mnist1d-") for f in files)
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]  # renamed into place

    def no_generation(*args, **kwargs):
        raise AssertionError("make_dataset called although the data are cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    second = data.mnist1d(num_samples=SMALL, cache_dir=cache)
    for a, b in zip(first[:4], second[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    # Other generation arguments are another cache entry, hence generated.
    with pytest.raises(AssertionError, match="make_dataset called"):
        data.mnist1d(num_samples=SMALL, seed=7, cache_dir=cache)


def test_mnist1d_cache_defaults_to_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data._cache_dir(None) == str(tmp_path / "lrresearch")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data._cache_dir(None) == os.path.expanduser("~/.cache/lrresearch")


def test_mnist1d_leaves_the_global_rngs_alone(tmp_path):
    np.random.seed(123)
    random.seed(123)
    data.mnist1d(num_samples=20, cache_dir=str(tmp_path))
    after_np, after_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    assert (after_np, after_py) == (np.random.random(), random.random())


def test_mnist1d_refuses_a_bad_num_samples(tmp_path):
    with pytest.raises(data.DataError, match=r"mnist1d\.num_samples"):
        data.mnist1d(num_samples=25, cache_dir=str(tmp_path))


def test_mnist1d_models_match_the_papers_sizes_and_give_logits():
    x = np.random.default_rng(0).normal(size=(8, 40)).astype(np.float32)
    cnn = models.mnist1d_cnn((40,), 10)
    assert tuple(cnn(x, training=False).shape) == (8, 10)
    assert cnn.get_layer("conv1d_2").output.shape[1:] == (5, 25)  # 125 features, as ConvBase
    assert [layer.name for layer in cnn.layers if "batch_norm" in layer.name] == [
        "batch_norm",
        "batch_norm_1",
        "batch_norm_2",
    ]
    # Without BatchNorm: ConvBase's parameter count in PyTorch (150 + 1900 + 1900 + 1260).
    assert models.mnist1d_cnn((40,), 10, batch_norm=False).count_params() == 5210
    mlp = models.mnist1d_mlp((40,), 10)
    assert tuple(mlp(x).shape) == (8, 10)
    assert mlp.count_params() == 15210  # MLPBase(40, 10, hidden_size=100)


@pytest.mark.parametrize("factory", [models.mnist1d_cnn, models.mnist1d_mlp])
def test_torch_init_draws_weights_and_biases_as_pytorch_does(factory):
    """PyTorch's nn.Linear / nn.Conv1d: kernel and bias uniform in +-1/sqrt(fan_in),
    fan_in = kernel_size * in_channels (variance bound**2 / 3)."""
    keras.utils.set_random_seed(0)
    model = factory(
        (40,), 10, **({"batch_norm": False} if factory is models.mnist1d_cnn else {}), init="torch"
    )
    for layer in model.layers:
        if not hasattr(layer, "kernel"):
            continue
        kernel, bias = (np.asarray(v) for v in (layer.kernel, layer.bias))
        bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound, layer.name
        assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3), layer.name
        assert np.any(bias != 0), layer.name
    default = factory((40,), 10)
    assert not np.any(np.asarray(default.get_layer("logits").bias))  # Keras: zero biases
    with pytest.raises(ValueError, match=r"\.init must be one of 'keras', 'torch', got 'he'"):
        factory((40,), 10, init="he")


@pytest.mark.slow
def test_mnist1d_cnn_experiment_trains_through_the_cli(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    gin.clear_config()
    try:
        code = cli.main(
            [
                "train",
                "--gin_file=experiments/mnist1d_cnn.gin",
                f"--gin_param=mnist1d.num_samples = {SMALL}",
                f"--gin_param=mnist1d.cache_dir = '{cache}'",
                "--gin_param=Trainer.steps = 100",
                "--gin_param=Trainer.batch_size = 40",
                "--gin_param=Trainer.steps_per_loop = 100",
                "--gin_param=Trainer.eval_every = 100",
                "--gin_param=Trainer.histogram_every = 0",
                f"--logdir={tmp_path}",
                "--run_name=cnn",
                "--quiet",
            ]
        )
    finally:
        gin.clear_config()
    assert code == 0
    events = read_events(tmp_path / "cnn")
    loss = events.scalar("loss/batch")
    assert len(loss) == 100 and np.all(np.isfinite(loss))
    assert loss[-20:].mean() < 0.7 * loss[:10].mean()
    assert events.values("eval/accuracy")[-1] > 0.2  # chance is 0.1
