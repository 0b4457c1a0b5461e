"""The session's stop: accumulators still add up, Spark stops, the accumulator server closes its socket
without the driver waiting for it, and a local JVM is ended with its temporary folder."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pyspark import SparkContext

from cifarflow.data import spark as sparkmod


def test_stop_shuts_the_accumulator_server_down_in_the_background() -> None:
    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    context = sparkmod.build("local[2]", "cifarflow-tests-stop")
    total = context.accumulator(0)
    context.parallelize(range(10), 2).foreach(total.add)
    assert total.value == 45
    server = context._accumulatorServer
    sparkmod.stop(context)
    assert context._jsc is None  # SparkContext.stop() ran
    deadline = time.monotonic() + 10
    while server.socket.fileno() != -1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.socket.fileno() == -1  # closed by its shutdown thread


def test_stop_ends_the_local_jvm_and_removes_its_files_and_a_new_session_starts(
    monkeypatch: Any, tmp_path: Path
) -> None:
    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    for attempt in range(2):  # the second session starts a JVM of its own
        context = sparkmod.build("local[2]", "cifarflow-tests-end")
        assert context.parallelize(range(10), 2).map(lambda x: x * 2).sum() == 90
        gateway = SparkContext._gateway
        assert gateway is not None and gateway.proc is not None
        (scratch,) = tmp_path.iterdir()  # java.io.tmpdir and spark.local.dir
        assert context.getConf().get("spark.local.dir") == str(scratch)
        sparkmod.stop(context)
        assert gateway.proc.poll() is not None and SparkContext._gateway is None, attempt
        assert list(tmp_path.iterdir()) == []


def test_a_chosen_local_dir_keeps_the_jvm_to_its_own_exit(monkeypatch: Any, tmp_path: Path) -> None:
    """Spark's files are where the user put them: only the JVM's own exit removes them."""
    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    context = sparkmod.build("local[2]", "cifarflow-tests-keep", conf={"spark.local.dir": str(tmp_path)})
    gateway = SparkContext._gateway
    assert gateway is not None and gateway.proc is not None
    sparkmod.stop(context)
    assert gateway.proc.poll() is None and SparkContext._gateway is gateway


def test_a_session_starts_spark_sql_only_when_a_job_queries() -> None:
    """RDD jobs (pass 1 over content indexes, pass 2) never pay for Spark SQL's start; a query gets a session
    around the same context, and stopping the context ends both."""
    from pyspark.sql import SparkSession

    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    with sparkmod.session("local[2]", "cifarflow-tests-lazy-sql") as spark:
        assert spark.context.parallelize(range(4), 2).sum() == 6
        assert SparkSession._instantiatedSession is None
        assert spark.sql.range(5).count() == 5
        assert spark.sql.sparkContext is spark.context
        assert (
            spark.sql.conf.get("spark.sql.shuffle.partitions")
            == sparkmod.DEFAULTS["spark.sql.shuffle.partitions"]
        )
    assert SparkSession._instantiatedSession is None and SparkContext._active_spark_context is None
