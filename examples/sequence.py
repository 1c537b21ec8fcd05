"""Next-byte prediction with a small GRU: a loss over every token of the batch.

What it shows: a sequence model trained by `lrresearch train` from a gin file
(`examples/sequence.gin`), where one example is a whole window of text:

- `zen_windows` cuts the Zen of Python (it ships with Python: `import this`) into
  fixed-length windows of bytes and returns `(train, eval)` `tf.data` pipelines of
  unbatched examples `(tokens[:-1], tokens[1:])`, each `[sequence_length]` int32.
  Training windows start at every byte of the first 85% of the text; eval windows at
  every byte of the rest (held-out lines).
- `byte_gru` is a model factory: embedding, one GRU layer, and a dense layer giving
  `[batch, sequence_length, 256]` logits over the byte values.
- `Trainer.loss = @keras.losses.SparseCategoricalCrossentropy()` (from logits) gives one
  cross-entropy per token, `[batch, sequence_length]`; the loss the LR controller sees,
  `loss/batch`, is their mean over all tokens of the batch. `Trainer.metrics =
  ['accuracy']` is the per-token accuracy of the most likely next byte.

Run it from the repository root (gin's `import examples.sequence` line finds this
folder there):

    lrresearch train --gin_file=examples/sequence.gin

At initialization the loss is near `log(256) = 5.55` nats (a uniform guess over the
byte values). At the gin defaults (400 batches, ~13 s on 2 CPU cores) `loss/batch`
falls from 5.55 to ~1.0. The text is 856 bytes, so the model soon memorizes the
training windows: `eval/loss` on the held-out lines is lowest at the first evaluation
(2.95 at batch 100) and then rises (3.23 at the end) while `eval/accuracy` still
climbs (0.19 to 0.29). The example is about the mechanics (a loss over batch x time, a
tf.data input, a schedule with warmup), not about generalization.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from collections.abc import Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

VOCAB_SIZE = 256  # byte values


def zen_of_python() -> bytes:
    """The text `import this` prints (856 ASCII bytes), as bytes."""
    # `this` prints the Zen when first imported; keep that off the run's output.
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13").encode("ascii")


def windows(tokens: np.ndarray, length: int) -> np.ndarray:
    """Every window of `length` consecutive tokens, `[len(tokens) - length + 1, length]`."""
    return np.lib.stride_tricks.sliding_window_view(tokens, length).copy()


def _examples(tokens: np.ndarray, sequence_length: int) -> tf.data.Dataset:
    """`(inputs, targets)` = `(window[:-1], window[1:])` for each window of
    `sequence_length + 1` tokens."""
    text_windows = windows(tokens, sequence_length + 1).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((text_windows[:, :-1], text_windows[:, 1:]))


@gin.configurable
def zen_windows(
    sequence_length: int = 32,
    eval_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """`(train, eval)` pipelines of next-byte examples from the Zen of Python.

    Args:
      sequence_length: tokens per example (inputs and targets alike).
      eval_fraction: the share of the text, from its end, held out for eval.
      seed: the training shuffle order (reshuffled every epoch).

    Returns:
      `(train, eval)`, each of `(inputs, targets)`, int32 `[sequence_length]`, with
      `targets[t] = inputs[t + 1]` within the text.
    """
    tokens = np.frombuffer(zen_of_python(), dtype=np.uint8)
    split = int(len(tokens) * (1.0 - eval_fraction))
    if min(split, len(tokens) - split) <= sequence_length:
        raise ValueError(
            f"zen_windows.sequence_length must be shorter than each split of the "
            f"{len(tokens)}-byte text ({split} train, {len(tokens) - split} eval bytes), "
            f"got {sequence_length}"
        )
    train = _examples(tokens[:split], sequence_length)
    train = train.shuffle(len(tokens), seed=seed, reshuffle_each_iteration=True)
    return train, _examples(tokens[split:], sequence_length)


@gin.configurable
def byte_gru(
    input_shape: Sequence[int],
    embedding_dim: int = 32,
    units: int = 128,
) -> keras.Model:
    """Byte embedding -> GRU (one output per position) -> logits over the 256 bytes.

    Args:
      input_shape: `(sequence_length,)`; passed by lrresearch.
      embedding_dim: size of each byte's embedding.
      units: GRU state size.

    Returns:
      A model mapping int32 `[batch, sequence_length]` to float32 logits
      `[batch, sequence_length, 256]`; position `t` sees tokens `0..t` only.
    """
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape), dtype="int32"),
            keras.layers.Embedding(VOCAB_SIZE, int(embedding_dim), name="embedding"),
            keras.layers.GRU(int(units), return_sequences=True, name="gru"),
            keras.layers.Dense(VOCAB_SIZE, name="logits"),
        ],
        name="byte_gru",
    )
