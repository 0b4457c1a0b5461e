"""Benchmark one-process Pillow decode + resize (``cifarflow.data.images.decode``): the floor the Spark job's
per-core throughput on image folders is compared with.

For each source size (square synthetic images from ``synth_folders``, JPEG quality 90 and PNG) and each target
size, the same few hundred encoded images are decoded in a loop for ``--seconds``: shorter side to N, centre
crop, RGB uint8, as the Spark job will. JPEG is measured with and without ``draft()`` (libjpeg decoding at 1/2,
1/4 or 1/8 scale when the source is at least twice the target's ``DRAFT_GAP`` multiple); PNG has no draft.
Rates are images per wall second and per CPU-second of this process (the per-core figure, which stays
meaningful on a shared machine).

    .venv/bin/python benchmarks/decode_bench.py [--sources 32 96 224 500] [--targets 32 96 224] [--seconds 1.5]

Appends one JSON object to ``benchmarks/results/decode_bench.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench_common import append, cpu_seconds
from cifarflow.data import images
from cifarflow.data.synth_folders import FolderSpec
from cifarflow.data.synth_folders import images as synth_images


def sources(size: int, fmt: str, count: int) -> list[bytes]:
    spec = FolderSpec(classes=10, train=count, test=0, size=size, seed=0, formats=(fmt,))
    return [data for _, data in synth_images(spec)]


def measure(encoded: list[bytes], target: int, draft: bool, seconds: float) -> dict[str, float]:
    """Decode ``encoded`` round-robin for ``seconds`` (after one warm pass); wall and CPU rates."""
    for data in encoded:
        images.decode(data, target, draft=draft)
    done, wall0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - wall0 < seconds:
        for data in encoded:
            images.decode(data, target, draft=draft)
        done += len(encoded)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return {"images": done, "per_s": round(done / wall, 1), "per_cpu_s": round(done / max(cpu, 1e-9), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, nargs="+", default=[32, 96, 224, 500])
    parser.add_argument("--targets", type=int, nargs="+", default=[32, 96, 224])
    parser.add_argument("--count", type=int, default=200, help="distinct encoded images per source")
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for source in args.sources:
        encoded = {fmt: sources(source, fmt, args.count) for fmt in ("jpeg", "png")}
        for target in args.targets:
            runs = [("jpeg", True), ("jpeg", False), ("png", False)]
            for fmt, draft in runs:
                rate = measure(encoded[fmt], target, draft, args.seconds)
                kb = sum(map(len, encoded[fmt])) / len(encoded[fmt]) / 1024
                row = {"source": source, "target": target, "format": fmt, "draft": draft, "kb": round(kb, 1)}
                rows.append({**row, **rate})
                print(
                    f"{source:4d} px -> {target:3d} px  {fmt:4s} draft={'on ' if draft else 'off'}  "
                    f"{rate['per_s']:8.1f} images/s  {rate['per_cpu_s']:8.1f} per CPU-s  ({kb:.1f} KB)"
                )
    append("decode_bench", {"seconds": args.seconds, "count": args.count, "rows": rows})


if __name__ == "__main__":
    main()
