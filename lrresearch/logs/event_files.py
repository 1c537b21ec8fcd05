"""A run's TensorBoard event files on disk: read them with their damage, trim them.

An event file is a TFRecord file: each record is `uint64 length`, `uint32 masked
crc32c(length)`, `length` bytes of a serialized `Event`, `uint32 masked crc32c(data)`.
TensorBoard's loaders stop quietly at the first bad record, so a truncated or damaged
file looks like a shorter run. `read_records` says where the damage is.

A resumed run continues from a checkpoint at step N, but the interrupted process may
have written points past N (the writer flushes every 1,000 events and at
checkpoints). TensorBoard's Python `EventAccumulator` purges only some kinds of events
on a `SessionLog.START` (not the tensor events TF2 summaries are), so
`drop_steps_from` rewrites the files without them, each one atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import struct
from collections.abc import Iterator

import tensorflow as tf
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

# length (8) + crc of length (4) + crc of data (4)
FRAMING_BYTES = 16
EVENT_FILE_PATTERN = "*tfevents*"
TEMPORARY_PATTERN = ".trim-*.tmp"


@dataclasses.dataclass(frozen=True)
class Damage:
    """Where an event file stops being readable.

    Attributes:
      path: the file.
      offset: byte offset of the first bad record (everything before it is intact).
      file_size: the file's size in bytes.
      records_read: intact records before `offset`.
      last_step: the step of the last intact record (None if there is none).
      truncated: True if the file ends inside its last record (a process killed while
        writing, or a full disk); False if a record's checksum is wrong (bytes changed).
    """

    path: str
    offset: int
    file_size: int
    records_read: int
    last_step: int | None
    truncated: bool

    def describe(self) -> str:
        """One line: what is wrong, where, and what was read before it."""
        kind = (
            f"truncated at byte {self.offset} of {self.file_size} (its last record is "
            "incomplete: the run was probably killed while writing, or the disk was full)"
            if self.truncated
            else f"damaged at byte {self.offset} of {self.file_size} (a record's checksum "
            "does not match: bytes were changed)"
        )
        last = "no step" if self.last_step is None else f"up to step {self.last_step}"
        return f"{self.path}: {kind}; {self.records_read} intact records before it, {last}"


def event_files(run_dir: str) -> list[str]:
    """The event files directly in `run_dir`, oldest first (their names sort by time)."""
    return sorted(
        path
        for path in glob.glob(os.path.join(run_dir, EVENT_FILE_PATTERN))
        if os.path.isfile(path) and not os.path.basename(path).startswith(".")
    )


def _records(path: str) -> Iterator[bytes]:
    """The records of `path`, read and checksummed by TF's C++ reader (the one
    TensorBoard's loader uses; `tf.data.TFRecordDataset` costs ~50 us per record)."""
    try:  # as tensorboard/backend/event_processing/event_file_loader.py does
        from tensorflow.python.util import deprecation

        quiet = deprecation.silence()
    except (ImportError, AttributeError):
        quiet = contextlib.nullcontext()
    with quiet:
        iterator = tf.compat.v1.io.tf_record_iterator(path)
    yield from iterator


def read_records(path: str) -> tuple[list[tuple[int, bytes]], Damage | None]:
    """Every intact record of `path` with its byte offset, and the damage if any.

    Checksums are verified by TensorFlow's record reader (C++), so a changed byte is
    found, not only a short file.
    """
    records: list[tuple[int, bytes]] = []
    offset = 0
    last_step = None
    try:
        for data in _records(path):
            records.append((offset, data))
            offset += FRAMING_BYTES + len(data)
    except tf.errors.DataLossError:
        pass
    size = os.path.getsize(path)
    if offset == size:
        return records, None
    if records:
        last_step = event_pb2.Event.FromString(records[-1][1]).step
    return records, Damage(path, offset, size, len(records), last_step, _ends_inside(path, offset))


def _ends_inside(path: str, offset: int) -> bool:
    """True if the file ends inside the record at `offset`: its header is cut, or its
    length passes the length checksum and runs past the end. A flipped bit in a length
    also runs past the end; the checksum tells that apart as damage."""
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(12)
        rest = len(header) + len(f.read())
    if len(header) < 12:
        return True
    (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
    if masked_crc32c(header[:8]) != crc:
        return False
    return rest < FRAMING_BYTES + length


@dataclasses.dataclass
class Trimmed:
    """What `drop_steps_from` changed: files rewritten or removed, events dropped, and
    the damage it cut away (each a `Damage.describe()` line)."""

    rewritten: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    dropped_events: int = 0
    damage: list[str] = dataclasses.field(default_factory=list)


def drop_steps_from(run_dir: str, step: int) -> Trimmed:
    """Rewrites the event files of `run_dir` without the events at `step` or later.

    Where the kept events are the start of a file (steps grow through a file, so this
    is the usual case) the file is truncated in place: one system call, no free space
    needed. Otherwise the kept records are copied to a hidden temporary file beside it,
    synced, then renamed over the original (atomic on POSIX): a process killed during
    this leaves either the old file or the new one, and a stale temporary file is
    removed on the next call.
    A damaged or truncated tail is dropped as well (reported in `Trimmed.damage`). A
    file left with no summary at all is removed.
    """
    trimmed = Trimmed()
    for stale in glob.glob(os.path.join(run_dir, TEMPORARY_PATTERN)):
        os.remove(stale)
    for path in event_files(run_dir):
        records, damage = read_records(path)
        keep = [(o, d) for o, d in records if event_pb2.Event.FromString(d).step < step]
        dropped = len(records) - len(keep)
        if not dropped and damage is None:
            continue
        trimmed.dropped_events += dropped
        if damage is not None:
            trimmed.damage.append(damage.describe())
        if all(event_pb2.Event.FromString(d).HasField("file_version") for _, d in keep):
            os.remove(path)
            trimmed.removed.append(path)
            continue
        if [o for o, _ in keep] == [o for o, _ in records[: len(keep)]]:
            # The usual case (steps grow through a file): cut the tail in place, which
            # needs no free space (the disk may be full).
            offset, data = keep[-1]
            os.truncate(path, offset + FRAMING_BYTES + len(data))
        else:
            _rewrite(path, keep)
        trimmed.rewritten.append(path)
    return trimmed


def _rewrite(path: str, keep: list[tuple[int, bytes]]) -> None:
    """Copies the framed bytes of the `keep` records into a new file, then renames it
    over `path`."""
    # Not named like an event file: TensorBoard reads any file with "tfevents" in it.
    name = TEMPORARY_PATTERN.replace("*", str(os.getpid()))
    temporary = os.path.join(os.path.dirname(path), name)
    with open(path, "rb") as source, open(temporary, "wb") as target:
        for offset, data in keep:
            source.seek(offset)
            target.write(source.read(FRAMING_BYTES + len(data)))
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)
