"""How a preprocessed image should be stored in the dataset's Parquet shards: raw HWC uint8 (zstd level 1, as
``manifest.table_bytes`` writes it) or re-encoded (PNG, JPEG quality 95), at 32, 96 and 224 px.

For each size: bytes per image in the shard, and the reader's cost (images/s, one core) to get uint8 HWC arrays
back (raw: one ``np.frombuffer`` per shard; PNG/JPEG: one Pillow decode per image). Images are
``synth_folders.render`` ones (shapes on a background with +-25 pixel noise: the noise makes them compress like
photographs rather than like flat drawings).

    .venv/bin/python benchmarks/storage_bench.py [--images 400]
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cifarflow.data import manifest as mf
from cifarflow.data.synth_folders import render

SIZES = (32, 96, 224)


def encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, "PNG")
    else:
        Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def shard(payloads: list[bytes]) -> bytes:
    table = pa.table(
        {
            "id": pa.array([str(i) for i in range(len(payloads))]),
            "label": pa.array(np.zeros(len(payloads), np.int32)),
            "image": pa.array(payloads, pa.binary()),
        },
        schema=mf.SCHEMA,
    )
    return mf.table_bytes(table)


def read_back(data: bytes, fmt: str, size: int) -> np.ndarray:
    column = pq.read_table(io.BytesIO(data), columns=["image"]).column("image").combine_chunks()
    if fmt == "raw":
        return np.frombuffer(column.buffers()[2], np.uint8, len(column) * size * size * 3).reshape(
            -1, size, size, 3
        )
    return np.stack([np.asarray(Image.open(io.BytesIO(b.as_py())).convert("RGB")) for b in column])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        rng = np.random.default_rng(size)
        arrays = [render(i % 10, size, size, rng) for i in range(args.images)]
        for fmt in ("raw", "png", "jpeg95"):
            payloads = [a.tobytes() if fmt == "raw" else encoded(a, fmt[:4]) for a in arrays]
            data = shard(payloads)
            best = min(_timed(lambda d=data, f=fmt, s=size: read_back(d, f, s)) for _ in range(3))
            rows.append(
                {
                    "size": size,
                    "storage": fmt,
                    "bytes_per_image": round(len(data) / args.images),
                    "raw_ratio": round(len(data) / (args.images * size * size * 3), 3),
                    "read_images_per_s": round(args.images / best),
                }
            )
            print(json.dumps(rows[-1]), flush=True)


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
