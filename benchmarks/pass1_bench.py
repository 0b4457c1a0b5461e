"""Pass 1's plan by row shape: what the JVM spends on the duplicates and the val cut-offs when a row's id is the
``member:record`` string cifarflow uses, or an integer that sorts the same way (the "narrower row" lever in
docs/benchmarks.md).

The same plan as the job (:func:`plan_split`) on the same rows:
``--images`` scan rows made inside Spark (a 16-byte hash, a 64-bit key, a label, a train/test split, no
duplicates) and cached before the clock starts, so only the plan is timed; the variants alternate. The JVM's
CPU seconds come from /proc. Records go to ``benchmarks/results/pass1.json``.

    .venv/bin/python benchmarks/pass1_bench.py --images 3000000 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench_common import append

TICKS = os.sysconf("SC_CLK_TCK")


def jvm_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def scan_rows(spark: Any, images: int, integer_ids: bool) -> Any:
    """Rows shaped like pass 1's scan: five train members and a test member, ids as the job writes them."""
    from pyspark.sql import functions as F

    n = F.col("id")
    member = n % 6
    record = F.floor(n / 6)
    string_id = F.concat(
        F.when(member == 5, F.lit("test_batch.bin")).otherwise(
            F.concat(F.lit("data_batch_"), (member + 1).cast("string"), F.lit(".bin"))
        ),
        F.lit(":"),
        F.lpad(record.cast("string"), 7, "0"),
    )
    return spark.range(0, images, 1, 4).select(
        (member * 10_000_000 + record if integer_ids else string_id).alias("id"),
        F.when(member == 5, F.lit("test")).otherwise(F.lit("train")).alias("src"),
        (n % 10).cast("int").alias("label"),
        F.substring(F.unhex(F.sha2(n.cast("string"), 256)), 1, 16).alias("hash"),
        F.xxhash64(n).alias("key"),
    )


def plan_once(spark: Any, scan: Any, pid: int) -> dict[str, float]:
    from cifarflow.data.preprocess import plan_split

    images = scan.count()
    wall, cpu = time.perf_counter(), jvm_cpu(pid)
    plan = plan_split(scan, 0.1, images, 10)
    assert not plan.dropped and sum(plan.train_kept.values()) + sum(plan.test.values()) == images
    return {"seconds": round(time.perf_counter() - wall, 2), "jvm_cpu_s": round(jvm_cpu(pid) - cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from cifarflow.data import spark as sparkmod

    with sparkmod.session("local[2]", app_name="pass1-bench") as spark:
        pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        scans = {}
        for variant, integer_ids in (("string id", False), ("integer id", True)):
            scans[variant] = scan_rows(spark, args.images, integer_ids).cache()
            scans[variant].count()
        plan_once(spark, scans["string id"], pid)  # warm-up: JIT and query compilation, not timed
        runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in scans}
        for i in range(args.repeat):
            order = list(scans) if i % 2 == 0 else list(reversed(scans))
            for variant in order:
                runs[variant].append(plan_once(spark, scans[variant], pid))
                print(variant, runs[variant][-1], flush=True)
    append("pass1", {"benchmark": "pass 1 plan by row shape", "images": args.images, "runs": runs})


if __name__ == "__main__":
    main()
