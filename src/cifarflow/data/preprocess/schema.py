"""What tasks return to the driver: pass 1's scan rows as an Arrow schema (Spark's types are derived from it,
so the two sides cannot drift), pass 2's shard records; and the Arrow form of a dataset shard."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from cifarflow.data import manifest as mf

# Pass 1's rows: small columns only (no image bytes leave the tasks).
SCAN_ARROW = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("src", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("hash", pa.binary(), nullable=False),
        pa.field("key", pa.int64(), nullable=False),
    ]
)


class ShardRow(NamedTuple):
    """What a pass-2 task returns for each shard it wrote."""

    split: str
    path: str
    rows: int
    bytes: int
    sha256: str
    counts: list[int]  # images per class
    sums: list[int]  # exact per-channel pixel sums (train shards; zeros otherwise)
    squares: list[int]


def spark_schema(schema: pa.Schema) -> Any:
    """The Spark StructType that ``schema`` maps to (one definition for both sides)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def numeric_column(values: np.ndarray, dtype: type[np.number[Any]]) -> pa.Array:
    """An Arrow column of ``values`` (which fit ``dtype``: labels, keys, positions) built from its buffer:
    ``pa.array`` of a numpy array asks whether it is a pandas object, which imports pandas (~0.35 s in each
    Python worker, for nothing)."""
    data = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(dtype), len(data), [None, pa.py_buffer(data)])


def image_column(images: np.ndarray) -> pa.Array:
    """A binary Arrow column over the (n, image bytes) rows without copying them."""
    n = images.shape[0]
    size = images[0].nbytes if n else 0
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(size)
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(images))]
    )


def shard_table(ids: pa.StringArray, labels: np.ndarray, images: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays(
        [ids, numeric_column(labels, np.int32), image_column(images)],
        schema=mf.SCHEMA,
    )
