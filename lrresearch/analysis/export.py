"""`compare --export FILE`: every scalar tag of every run (per-batch tags and eval tags)
as one tidy table, one row per (run, group, step, tag, value, wall_time), for pandas or R.

`.csv` is written with the standard library; `.parquet` with pyarrow (the `parquet` extra:
`pip install 'lrresearch[parquet]'`). A step logged more than once keeps the value logged
last, as `compare` does (`curves.load`). An existing file is never overwritten.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence

from lrresearch.analysis.curves import Series

COLUMNS = ("run", "group", "step", "tag", "value", "wall_time")
FORMATS = (".csv", ".parquet")


def check_export(path: str) -> str:
    """The format (`.csv` or `.parquet`) of `path`; ValueError (naming `--export` and the
    fix) for another suffix, an existing file, or a missing pyarrow. Call it before
    reading any run."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"compare --export={path!r}: the file must end in .csv or .parquet, got "
            f"{suffix or 'no suffix'!r}"
        )
    if os.path.exists(path):
        raise FileExistsError(
            f"compare --export={path!r} exists and is never overwritten; pass another file name"
        )
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(
                f"compare --export={path!r}: writing Parquet needs pyarrow, which is not "
                "installed; install it with `pip install 'lrresearch[parquet]'` or export "
                "to a .csv file instead"
            ) from None
    return suffix


def rows(
    names: Sequence[str], groups: Sequence[str], data: Sequence[dict[str, Series]]
) -> Iterator[tuple[str, str, int, str, float, float]]:
    """(run, group, step, tag, value, wall_time) per point, runs then tags (sorted) in order."""
    for name, group, series in zip(names, groups, data, strict=True):
        for tag in sorted(series):
            s = series[tag]
            for step, value, wall in zip(s.steps, s.values, s.wall_times, strict=True):
                yield name, group, int(step), tag, float(value), float(wall)


def export(
    path: str, names: Sequence[str], groups: Sequence[str], data: Sequence[dict[str, Series]]
) -> int:
    """Writes the table to `path` (never overwriting it); returns the number of rows."""
    suffix = check_export(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".csv":
        count = 0
        with open(path, "x", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows(names, groups, data):
                writer.writerow([*row[:4], repr(row[4]), repr(row[5])])
                count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows(names, groups, data), strict=True)) or [()] * len(COLUMNS)
    types = [pa.string(), pa.string(), pa.int64(), pa.string(), pa.float64(), pa.float64()]
    table = pa.table(
        {c: pa.array(list(v), t) for c, v, t in zip(COLUMNS, columns, types, strict=True)}
    )
    with open(path, "xb") as f:  # never overwrite, even if the file appeared meanwhile
        pq.write_table(table, f)
    return table.num_rows
