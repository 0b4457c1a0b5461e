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
