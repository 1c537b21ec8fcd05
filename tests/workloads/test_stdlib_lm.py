"""The built-in standard-library byte LM workload (`lrresearch.workloads.stdlib_lm`):
a deterministic corpus, next-byte windows, a causal transformer, bits per byte, and a
short run of its experiment gin file through `lrresearch train`."""

from __future__ import annotations

import math
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.cli import commands as cli
from lrresearch.training.arguments import variable_names
from lrresearch.workloads import stdlib_lm
from tests.support import REPO, read_events


def test_corpus_is_the_fixed_file_list_read_twice_the_same():
    folder = stdlib_lm.stdlib_dir()
    assert list(stdlib_lm.STDLIB_FILES) == sorted(stdlib_lm.STDLIB_FILES)
    for name in stdlib_lm.STDLIB_FILES:
        assert os.path.isfile(os.path.join(folder, name)), name
    first = stdlib_lm.stdlib_corpus()
    stdlib_lm.stdlib_corpus.cache_clear()
    again = stdlib_lm.stdlib_corpus()
    assert first == again
    expected = b""
    for name in stdlib_lm.STDLIB_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            expected += f.read()
    assert first == expected
    info = stdlib_lm.corpus_info()
    assert info["bytes"] == len(first) > 500_000
    assert info["files"] == len(stdlib_lm.STDLIB_FILES)


def test_windows_are_next_byte_pairs_of_the_right_split():
    corpus = np.frombuffer(stdlib_lm.stdlib_corpus(), np.uint8)
    split = int(len(corpus) * 0.9)
    train, evaluation = stdlib_lm.stdlib_bytes(context=16, eval_fraction=0.1, seed=3)
    for ds in (train, evaluation):
        assert ds.element_spec[0].shape == (16,) and ds.element_spec[0].dtype == tf.int32
        assert ds.element_spec[1].shape == (16,)
    train_text = corpus[:split].tobytes()
    for x, y in train.take(20):
        x, y = x.numpy(), y.numpy()
        np.testing.assert_array_equal(x[1:], y[:-1])
        assert bytes(np.append(x, y[-1]).astype(np.uint8)) in train_text
    # The same seed gives the same windows; eval windows tile the held-out bytes.
    again, _ = stdlib_lm.stdlib_bytes(context=16, eval_fraction=0.1, seed=3)
    for (a, _), (b, _) in zip(train.take(5), again.take(5), strict=True):
        np.testing.assert_array_equal(a, b)
    held_out = corpus[split:].astype(np.int32)
    windows = list(evaluation.as_numpy_iterator())
    assert len(windows) == (len(held_out) - 1) // 16
    for i in (0, 1, len(windows) - 1):
        x, y = windows[i]
        np.testing.assert_array_equal(x, held_out[16 * i : 16 * i + 16])
        np.testing.assert_array_equal(y, held_out[16 * i + 1 : 16 * i + 17])


def test_attention_is_causal_and_shapes_are_right():
    keras.utils.set_random_seed(0)
    model = stdlib_lm.byte_transformer((24,), layers=2, width=32, heads=4, context=24)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 24)).astype(np.int32)
    logits = model(x).numpy()
    assert logits.shape == (2, 24, 256)
    changed = x.copy()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    logits2 = model(changed).numpy()
    np.testing.assert_allclose(logits2[:, :10], logits[:, :10], rtol=0, atol=1e-5)
    assert np.abs(logits2[:, 10:] - logits[:, 10:]).max() > 1e-4


def test_bits_per_byte_is_cross_entropy_over_ln2():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 256)).astype(np.float32)
    y = rng.integers(0, 256, size=(3, 5))
    log_probs = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    nats = -np.take_along_axis(log_probs, y[..., None], -1).mean()
    metric = stdlib_lm.BitsPerByte()
    assert metric.name == "bits_per_byte"
    metric.update_state(y[:2], logits[:2])
    metric.update_state(y[2:], logits[2:])
    np.testing.assert_allclose(float(metric.result()), nats / math.log(2), rtol=1e-5)


def test_bits_per_byte_is_about_8_at_initialization():
    keras.utils.set_random_seed(0)
    model = stdlib_lm.byte_transformer((32,), layers=1, width=32, heads=2, context=32)
    _, evaluation = stdlib_lm.stdlib_bytes(context=32)
    metric = stdlib_lm.BitsPerByte()
    for x, y in evaluation.take(64).batch(64):
        metric.update_state(y, model(x))
    assert 7.5 < float(metric.result()) < 9.0


# The experiment shrunk for a test (through `lrresearch train`, from the repository root).
EXPERIMENT = [
    "Trainer.steps = 60",
    "Trainer.steps_per_loop = 30",
    # Fixed, so the 30-step leg of a resumed run ends its compiled calls where the
    # 60-step run does (the default is steps // 10). Which batch starts a call changes
    # the loss by ~1e-7 relative: TF's arithmetic optimizer (Grappler) rewrites a loop's
    # first batch and its while body differently; with it off, any split matches.
    "Trainer.log_every = 30",
    "Trainer.eval_every = 30",
    "Trainer.checkpoint_every = 60",
    "Trainer.histogram_every = 30",  # and grad/norm/, update/ratio/: steps 0 and 30
    "Trainer.batch_size = 16",
    "stdlib_bytes.context = 32",
    "stdlib_bytes.eval_windows = 64",
    "byte_transformer.context = 32",
    "byte_transformer.width = 64",
    "byte_transformer.layers = 1",
    "WarmupCosineController.base_lr = 1e-2",
    "WarmupCosineController.warmup_steps = 10",
    "WarmupCosineController.decay_steps = 60",
]


def train_experiment(logdir, run_name: str, *flags: str):
    """`lrresearch train` of stdlib_transformer.gin with `EXPERIMENT` (+ `flags`)."""
    argv = [
        "train",
        "--gin_file=experiments/stdlib_transformer.gin",
        f"--logdir={logdir}",
        f"--run_name={run_name}",
        "--quiet",
        *[f"--gin_param={p}" for p in EXPERIMENT],
        *flags,
    ]
    gin.clear_config()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(REPO)
            assert cli.main(argv) == 0
    finally:
        gin.clear_config()
    return read_events(logdir / run_name)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """`(logdir, events)` of the shrunk experiment, trained once for this module."""
    logdir = tmp_path_factory.mktemp("stdlib_lm")
    return logdir, train_experiment(logdir, "lm")


@pytest.mark.slow
def test_experiment_gin_trains_and_logs_bits_per_byte(experiment):
    _, events = experiment
    loss = events.scalar("loss/batch")
    assert len(loss) == 60
    assert loss[-10:].mean() < loss[:5].mean() - 1.0
    bpb = events.values("eval/bits_per_byte").astype(np.float64)
    eval_loss = events.values("eval/loss").astype(np.float64)
    assert len(bpb) == len(eval_loss) >= 2
    np.testing.assert_allclose(bpb, eval_loss / math.log(2), rtol=1e-4)
    assert bpb[-1] < bpb[0] < 8.5
    # The corpus this run read is recorded with it, to compare with another run's.
    hparams = events.hparams()
    info = stdlib_lm.corpus_info()
    for key in ("python", "sha256", "bytes", "files"):
        assert hparams[f"dataset.{key}"] == info[key], key
    assert len(hparams["dataset.sha256"]) == 64 and hparams["dataset"] == "stdlib_bytes"


def final_checkpoint(run_dir) -> dict[str, np.ndarray]:
    """Every numeric value of the run's newest checkpoint (weights, Adam's slots,
    controller, moving averages, step), by name; not the count of saves."""
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    return {
        name: reader.get_tensor(name)
        for name, dtype in reader.get_variable_to_dtype_map().items()
        if (dtype.is_floating or dtype.is_integer) and not name.startswith("save_counter")
    }


@pytest.mark.slow
def test_transformer_resumed_halfway_equals_an_uninterrupted_run(experiment):
    logdir, full = experiment
    # Without the histograms (~4 s of tracing per run); they must not change training.
    off = "--gin_param=Trainer.histogram_every = 0"
    train_experiment(logdir, "cut", "--gin_param=Trainer.steps = 30", off)
    cut = train_experiment(logdir, "cut", "--resume", off)
    for tag in ("lr", "loss/batch", "grad/global_norm", "loss/ma_long"):
        # `scalar` checks one point per step 0..59: nothing duplicated by the resume.
        np.testing.assert_array_equal(cut.scalar(tag), full.scalar(tag), tag)
    for tag in ("eval/loss", "eval/bits_per_byte"):  # at steps 29 and 59
        np.testing.assert_array_equal(cut.values(tag), full.values(tag), tag)
    want = final_checkpoint(logdir / "lm")
    got = final_checkpoint(logdir / "cut")
    assert want.keys() == got.keys() and len(want) > 20
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, name)
    assert len(np.unique(full.scalar("lr"))) > 50  # the LR moved every batch


@pytest.mark.slow
def test_transformer_histograms_and_norms_are_named_by_layer(experiment):
    _, events = experiment
    model = stdlib_lm.byte_transformer((32,), layers=1, width=64, heads=4, context=32)
    names = set(variable_names(model.trainable_variables, model.name))
    assert {"byte_embedding/embeddings", "block0_attention/query/kernel", "logits/bias"} < names
    want = {f"{kind}/{name}" for kind in ("grad", "weights") for name in names}
    assert events.tags_of("histograms") == want
    for tag in want:
        assert list(events.steps(tag)) == [0, 30], tag
        assert np.all(np.isfinite(events.values(tag))), tag
    # The embedding's gradient (IndexedSlices, a row per token) in full: 256 x 64 values.
    assert events.values("grad/byte_embedding/embeddings")[0][:, 2].sum() == 256 * 64
    # grad/global_norm is the norm of the per-variable norms (repeated rows summed).
    norms = np.array([events.values(f"grad/norm/{name}") for name in sorted(names)])
    np.testing.assert_allclose(
        np.sqrt((norms.astype(np.float64) ** 2).sum(0)),
        events.scalar("grad/global_norm")[[0, 30]],
        rtol=1e-5,
    )
