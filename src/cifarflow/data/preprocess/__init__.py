"""The Spark job: raw CIFAR files or an image folder -> a validated, deduplicated, split and normalised Parquet
dataset. :mod:`.job` runs it (its docstring has the stages); the modules, each one concern:

- :mod:`.keys`: pure numpy per image (content hashes, split keys, val counts and cut-offs, channel moments);
- :mod:`.schema`: the Arrow schemas of what tasks return, and a shard's Arrow table;
- :mod:`.ranges`: the CIFAR input and its input ranges (one Spark task each);
- :mod:`.tasks`: what runs on the executors (read a range, scan it, write its shards);
- :mod:`.plan`: pass 1's decisions (duplicates, leakage, the val cut), asked of a scan: in Spark SQL over
  scan rows (:class:`~.plan.FrameScan`), or
- :mod:`.indexes`: in Python tasks over ingest's content indexes (:class:`~.indexes.IndexScan`);
- :mod:`.commit`: the driver's checks, the manifest, the move and the commit, the one-line error.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifarflow.data.preprocess.commit import assemble, check_destination
    from cifarflow.data.preprocess.commit import user_error as _user_error
    from cifarflow.data.preprocess.job import (
        RECIPE,
        Job,
        PreprocessResult,
        parameters,
        preprocess,
        read_source,
        run_job,
    )
    from cifarflow.data.preprocess.keys import (
        Cutoffs,
        channel_moments,
        content_hashes,
        mean_std,
        parse_id,
        split_keys,
        val_count,
    )
    from cifarflow.data.preprocess.plan import FrameScan, Scan, SplitPlan, plan_split
    from cifarflow.data.preprocess.ranges import CifarInput, InputFile, InputRange, plan_ranges
    from cifarflow.data.preprocess.schema import SCAN_ARROW, ShardRow, image_column, shard_table, spark_schema
    from cifarflow.data.preprocess.tasks import TEST_DELAY_ENV, TaskContext, scan_task, write_task

# Names load on first use (PEP 562): a Spark worker that unpickles a task imports only the modules the task
# needs (.tasks, .keys, .ranges...), not the driver's (.job, .commit and what they pull in: ~0.3 s a worker).
_EXPORTS: dict[str, tuple[str, str]] = {
    "CifarInput": ("ranges", "CifarInput"),
    "Cutoffs": ("keys", "Cutoffs"),
    "FrameScan": ("plan", "FrameScan"),
    "InputFile": ("ranges", "InputFile"),
    "InputRange": ("ranges", "InputRange"),
    "Job": ("job", "Job"),
    "PreprocessResult": ("job", "PreprocessResult"),
    "RECIPE": ("job", "RECIPE"),
    "SCAN_ARROW": ("schema", "SCAN_ARROW"),
    "Scan": ("plan", "Scan"),
    "ShardRow": ("schema", "ShardRow"),
    "SplitPlan": ("plan", "SplitPlan"),
    "TEST_DELAY_ENV": ("tasks", "TEST_DELAY_ENV"),
    "TaskContext": ("tasks", "TaskContext"),
    "_user_error": ("commit", "user_error"),
    "assemble": ("commit", "assemble"),
    "channel_moments": ("keys", "channel_moments"),
    "check_destination": ("commit", "check_destination"),
    "content_hashes": ("keys", "content_hashes"),
    "image_column": ("schema", "image_column"),
    "mean_std": ("keys", "mean_std"),
    "parameters": ("job", "parameters"),
    "parse_id": ("keys", "parse_id"),
    "plan_ranges": ("ranges", "plan_ranges"),
    "plan_split": ("plan", "plan_split"),
    "preprocess": ("job", "preprocess"),
    "read_source": ("job", "read_source"),
    "run_job": ("job", "run_job"),
    "scan_task": ("tasks", "scan_task"),
    "shard_table": ("schema", "shard_table"),
    "spark_schema": ("schema", "spark_schema"),
    "split_keys": ("keys", "split_keys"),
    "val_count": ("keys", "val_count"),
    "write_task": ("tasks", "write_task"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value


__all__ = [
    "RECIPE",
    "SCAN_ARROW",
    "TEST_DELAY_ENV",
    "CifarInput",
    "Cutoffs",
    "FrameScan",
    "InputFile",
    "InputRange",
    "Job",
    "PreprocessResult",
    "Scan",
    "ShardRow",
    "SplitPlan",
    "TaskContext",
    "_user_error",
    "assemble",
    "channel_moments",
    "check_destination",
    "content_hashes",
    "image_column",
    "mean_std",
    "parameters",
    "parse_id",
    "plan_ranges",
    "plan_split",
    "preprocess",
    "read_source",
    "run_job",
    "scan_task",
    "shard_table",
    "spark_schema",
    "split_keys",
    "val_count",
    "write_task",
]
