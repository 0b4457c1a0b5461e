"""The Arrow schemas of what tasks return to the driver (Spark's types are derived from them, so the two
sides cannot drift), and the Arrow form of a dataset shard."""

from __future__ import annotations

from typing import Any

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


def _longs() -> pa.DataType:
    return pa.list_(pa.field("element", pa.int64(), nullable=False))


# Pass 2's rows: one per shard written.
SHARD_ARROW = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("counts", _longs(), nullable=False),
        pa.field("sums", _longs(), nullable=False),
        pa.field("squares", _longs(), nullable=False),
    ]
)


def spark_schema(schema: pa.Schema) -> Any:
    """The Spark StructType that ``schema`` maps to (one definition for both sides)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


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
        [ids, pa.array(labels, pa.int32()), image_column(images)],
        schema=mf.SCHEMA,
    )
