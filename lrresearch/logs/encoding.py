"""Summary events for a block of per-batch rows, encoded in numpy instead of one TF
summary op per value.

TF's `WriteSummary` op makes one `Event` per value: a block of 100 batches of 12 tags
is 1,200 ops, 1,200 protos and 1,200 records, about 30 us of CPU per batch on this
project's 2-core machine, on a core the training step also uses. Here a block becomes
one `Event` per batch holding every tag's `Summary.Value` (tag, metadata, tensor), with
the same values, metadata and tensor encoding the op writes (`tensor_content`, as TF's
`AsProtoTensorContent`), built from precomputed byte prefixes and the rows' raw float32
bytes; the writer imports the events with `ImportEvent` in one compiled loop.
TensorBoard's loaders see the same tags, steps, values and metadata (its
`EventAccumulator` reads every value of an event; `tests/logs/test_batch_log.py` checks the
bytes against the op's).

Protobuf wire format used: a field's key is `number << 3 | wire type` as a varint;
length-delimited fields (wire type 2) carry a varint length. `Event`: `wall_time` = 1
(double), `step` = 2 (varint), `summary` = 5. `Summary.value` = 1. `Summary.Value`: `tag`
= 1, `tensor` = 8, `metadata` = 9. `TensorProto`: `dtype` = 1, `tensor_shape` = 2,
`tensor_content` = 4.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.util import tensor_util

DT_FLOAT = 1


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# A float32 scalar `TensorProto` up to its 4 bytes of content: dtype DT_FLOAT, shape [],
# then the key and length of `tensor_content`.
_SCALAR_TENSOR_HEAD = varint(1 << 3) + varint(DT_FLOAT) + delimited(2, b"") + varint(4 << 3 | 2)
_SCALAR_TENSOR_LENGTH = len(_SCALAR_TENSOR_HEAD) + 1 + 4


def scalar_value_prefix(tag: str, metadata: summary_pb2.SummaryMetadata | None) -> bytes:
    """The bytes of a `Summary.value` entry for a float32 scalar of `tag`, up to its 4
    bytes of content (the same for every step); without metadata if None."""
    tensor_field = varint(8 << 3 | 2) + varint(_SCALAR_TENSOR_LENGTH)
    meta = b"" if metadata is None else delimited(9, metadata.SerializeToString())
    body = delimited(1, tag.encode()) + meta + tensor_field + _SCALAR_TENSOR_HEAD + varint(4)
    return varint(1 << 3 | 2) + varint(len(body) + 4) + body


def tensor_value(tag: str, metadata: summary_pb2.SummaryMetadata, value: np.ndarray) -> bytes:
    """A whole `Summary.value` entry for any tensor (a histogram's buckets, say)."""
    tensor = tensor_util.make_tensor_proto(value)
    value_proto = summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
    return delimited(1, value_proto.SerializeToString())


def scalar_summaries(prefixes: Sequence[bytes], rows: np.ndarray) -> np.ndarray:
    """The serialized `Summary` of each row: uint8 `[n, length]` (every row has the
    same layout), from `rows` float32 `[n, k]` and the `k` tags' prefixes."""
    n, k = rows.shape
    widths = [len(p) + 4 for p in prefixes]
    out = np.empty((n, sum(widths)), np.uint8)
    raw = np.ascontiguousarray(rows, dtype="<f4").view(np.uint8).reshape(n, k, 4)
    at = 0
    for j, prefix in enumerate(prefixes):
        out[:, at : at + len(prefix)] = np.frombuffer(prefix, np.uint8)
        out[:, at + len(prefix) : at + widths[j]] = raw[:, j]
        at += widths[j]
    return out


def event(step: int, wall_time: float, summary: bytes) -> bytes:
    """A serialized `Event` with `summary` (serialized `Summary` bytes)."""
    return (
        b"\x09" + struct.pack("<d", wall_time) + varint(2 << 3) + varint(step)
        + delimited(5, summary)
    )  # fmt: skip


def block_events(
    steps: np.ndarray,
    wall_times: np.ndarray,
    prefixes: Sequence[bytes],
    scalars: np.ndarray,
    extra: Sequence[Mapping[str, bytes]] | None = None,
) -> list[bytes]:
    """One serialized `Event` per row: the row's scalars (`prefixes` as from
    `scalar_value_prefix`), then the encoded values in `extra[i]` (if given)."""
    summaries = scalar_summaries(prefixes, scalars)
    events = []
    for i, step in enumerate(steps.tolist()):
        summary = summaries[i].tobytes()
        if extra is not None:
            summary += b"".join(extra[i].values())
        events.append(event(step, float(wall_times[i]), summary))
    return events
