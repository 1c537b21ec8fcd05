"""A byte-level transformer language model on the Python standard library's sources.

The corpus exists offline on every machine that runs lrresearch: `STDLIB_FILES`, a
fixed, sorted list of 35 pure-Python modules of the standard library present in CPython
3.10 to 3.13, read from `sysconfig.get_paths()["stdlib"]` and concatenated as bytes in
that order (no separator: each file ends with a newline). The last `eval_fraction` of
the bytes (default 10%, the end of `typing.py`, `uuid.py` and `weakref.py`) is held
out for eval. The data are therefore the same on every machine with the same CPython
release; patch releases of one minor version change a few of these files slightly, and
a distribution may patch its stdlib, so `corpus_info()` records the Python version,
the byte count and a SHA-256 of the corpus (about 0.97 MB on CPython 3.11.7), and
every run on it keeps them in its HParams (`dataset.sha256`, ...).

- `stdlib_bytes` returns `(train, eval)` tf.data pipelines of unbatched next-byte
  examples `(tokens[:-1], tokens[1:])`, int32 `[context]`: training windows start at
  seeded random offsets of the training bytes (an endless stream drawn with
  `tf.data.Dataset.random`, so the iterator's position is checkpointed and `--resume`
  is exact), eval windows are the non-overlapping windows of the held-out bytes.
- `byte_transformer` is a small decoder-only transformer with pre-LN blocks and causal
  self-attention, giving logits `[batch, context, 256]`.
- `BitsPerByte` is the mean next-byte cross-entropy in bits (nats / ln 2): logged as
  `eval/bits_per_byte` with `Trainer.metrics = [@BitsPerByte()]`. A uniform guess over
  the 256 byte values is 8 bits per byte.

See the shipped `experiments/stdlib_transformer.gin` for a run.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import sysconfig
from collections.abc import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

VOCAB_SIZE = 256  # byte values

# The corpus, in this order. Top-level modules only (no packages, no test folders),
# each present in CPython 3.10, 3.11, 3.12 and 3.13.
STDLIB_FILES: tuple[str, ...] = (
    "abc.py",
    "argparse.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "glob.py",
    "heapq.py",
    "keyword.py",
    "linecache.py",
    "numbers.py",
    "operator.py",
    "queue.py",
    "random.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "timeit.py",
    "tokenize.py",
    "typing.py",
    "uuid.py",
    "weakref.py",
)


def stdlib_dir() -> str:
    """The folder of this Python's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


@functools.cache
def stdlib_corpus() -> bytes:
    """The files of `STDLIB_FILES` from `stdlib_dir()`, concatenated as bytes.

    Raises:
      FileNotFoundError: a file is missing (a Python installed without its sources).
    """
    folder = stdlib_dir()
    parts = []
    for name in STDLIB_FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                parts.append(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"stdlib_bytes: {path} is missing; this Python was installed without its "
                "standard library sources, which the corpus is made of"
            ) from None
    return b"".join(parts)


def corpus_info() -> dict[str, str | int]:
    """What identifies the corpus: Python version, file count, byte count and SHA-256.

    A run of `stdlib_bytes` records these in its HParams as `dataset.python`,
    `dataset.files`, `dataset.bytes` and `dataset.sha256` (`stdlib_bytes.info`), so two
    runs' data can be confirmed identical."""
    corpus = stdlib_corpus()
    return {
        "python": platform.python_version(),
        "files": len(STDLIB_FILES),
        "bytes": len(corpus),
        "sha256": hashlib.sha256(corpus).hexdigest(),
    }


def _eval_windows(tokens: np.ndarray, context: int) -> tf.data.Dataset:
    """The non-overlapping windows of `context + 1` bytes of `tokens` (each next-byte
    target is predicted once), as `(window[:-1], window[1:])`."""
    count = (len(tokens) - 1) // context
    starts = np.arange(count) * context
    windows = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((windows[:, :-1], windows[:, 1:]))


@gin.configurable
def stdlib_bytes(
    context: int = 128,
    eval_fraction: float = 0.1,
    eval_windows: int | None = None,
    seed: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """`(train, eval)` next-byte pipelines on the standard library corpus.

    Args:
      context: tokens per example (inputs and targets alike).
      eval_fraction: the share of the corpus bytes, from its end, held out for eval.
      eval_windows: at most this many eval windows (the first ones of the held-out
        bytes); None for all of them (about 760 at `context = 128`).
      seed: the sequence of training offsets.

    Returns:
      `(train, eval)`, each of `(inputs, targets)`, int32 `[context]`, with
      `targets[t] = inputs[t + 1]` in the corpus. `train` is endless: each window starts
      at a uniformly drawn offset of the training bytes; `eval` is finite.
    """
    context = int(context)
    if context < 1:
        raise ValueError(f"stdlib_bytes.context must be a positive integer, got {context}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"stdlib_bytes.eval_fraction must be in (0, 1), got {eval_fraction}")
    tokens = np.frombuffer(stdlib_corpus(), dtype=np.uint8)
    split = int(len(tokens) * (1.0 - eval_fraction))
    if min(split, len(tokens) - split) <= context + 1:
        raise ValueError(
            f"stdlib_bytes.context must be shorter than each split of the {len(tokens)}-"
            f"byte corpus ({split} train, {len(tokens) - split} eval bytes), got {context}"
        )
    train_tokens = tf.constant(tokens[:split].astype(np.int32))
    starts = split - context  # windows of context + 1 bytes that fit

    def window(draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        start = tf.math.floormod(draw, starts)
        chunk = tf.slice(train_tokens, [start], [context + 1])
        return tf.reshape(chunk[:-1], [context]), tf.reshape(chunk[1:], [context])

    # tf.data's random stream is checkpointable (unlike a Python generator).
    train = tf.data.Dataset.random(seed=int(seed)).map(window)
    evaluation = _eval_windows(tokens[split:], context)
    if eval_windows is not None:
        evaluation = evaluation.take(int(eval_windows))
    return train, evaluation


# The corpus depends on the Python it is read from, which the gin bindings do not say:
# the trainer records this in the run's HParams (`lrresearch.workloads.inputs.data_info`).
stdlib_bytes.info = corpus_info


@keras.saving.register_keras_serializable(package="lrresearch")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position `0..length-1` to `[batch, length,
    width]` inputs (`length <= context`)."""

    def __init__(self, context: int, **kwargs):
        super().__init__(**kwargs)
        self.context = int(context)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.context, int(input_shape[-1])),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embeddings",
        )

    def call(self, inputs):
        length = keras.ops.shape(inputs)[1]
        return inputs + keras.ops.cast(self.embeddings[:length], inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "context": self.context}


@gin.configurable
def byte_transformer(
    input_shape: Sequence[int],
    layers: int = 2,
    width: int = 128,
    heads: int = 4,
    context: int = 128,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> keras.Model:
    """A decoder-only transformer over bytes, pre-LN.

    Byte embedding (256 values) + learned position embedding, then `layers` blocks of
    `x + attention(LayerNorm(x))` (causal multi-head self-attention) and
    `x + MLP(LayerNorm(x))` (Dense `mlp_ratio * width`, GELU, Dense `width`), a final
    LayerNorm and a Dense layer giving the logits.

    Args:
      input_shape: `(sequence_length,)`, `sequence_length <= context`; passed by lrresearch.
      layers: transformer blocks.
      width: model width (embedding size); a multiple of `heads`.
      heads: attention heads, each of size `width // heads`.
      context: longest sequence (rows of the position embedding).
      mlp_ratio: the MLP's hidden width over `width`.
      dropout: dropout rate on attention weights and on each residual branch.

    Returns:
      A model mapping int32 `[batch, sequence_length]` to float32 logits
      `[batch, sequence_length, 256]`; position `t` sees tokens `0..t` only.
    """
    layers, width, heads, context = int(layers), int(width), int(heads), int(context)
    if width % heads:
        raise ValueError(
            f"byte_transformer.width must be a multiple of heads ({heads}), got {width}"
        )
    if input_shape[0] > context:
        raise ValueError(
            f"byte_transformer.context must be at least the sequence length "
            f"{input_shape[0]}, got {context}"
        )
    inputs = keras.Input(tuple(input_shape), dtype="int32", name="bytes")
    x = keras.layers.Embedding(VOCAB_SIZE, width, name="byte_embedding")(inputs)
    x = PositionEmbedding(context, name="position_embedding")(x)
    for i in range(layers):
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            heads, width // heads, dropout=dropout, name=f"block{i}_attention"
        )(h, h, use_causal_mask=True)
        h = keras.layers.Dropout(dropout, name=f"block{i}_attention_dropout")(h)
        x = keras.layers.Add(name=f"block{i}_attention_residual")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(mlp_ratio * width, activation="gelu", name=f"block{i}_mlp_in")(h)
        h = keras.layers.Dense(width, name=f"block{i}_mlp_out")(h)
        h = keras.layers.Dropout(dropout, name=f"block{i}_mlp_dropout")(h)
        x = keras.layers.Add(name=f"block{i}_mlp_residual")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    logits = keras.layers.Dense(VOCAB_SIZE, name="logits")(x)
    return keras.Model(inputs, logits, name="byte_transformer")


def bits_per_byte(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Next-byte cross-entropy in bits, per token: `[batch, length]` for int targets
    `[batch, length]` and logits `[batch, length, 256]`."""
    nats = keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)
    return nats / math.log(2.0)


@gin.configurable
class BitsPerByte(keras.metrics.MeanMetricWrapper):
    """The mean next-byte cross-entropy over every token, in bits (nats / ln 2)."""

    def __init__(self, name: str = "bits_per_byte", dtype: str | None = None):
        super().__init__(bits_per_byte, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
