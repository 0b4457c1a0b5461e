"""The session's stop: accumulators still add up, Spark stops, and the accumulator server closes its socket
without the driver waiting for it."""

from __future__ import annotations

import os
import time

from cifarflow.data import spark as sparkmod


def test_stop_shuts_the_accumulator_server_down_in_the_background() -> None:
    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    session = sparkmod.build("local[2]", "cifarflow-tests-stop")
    context = session.sparkContext
    total = context.accumulator(0)
    context.parallelize(range(10), 2).foreach(total.add)
    assert total.value == 45
    server = context._accumulatorServer
    sparkmod.stop(session)
    assert context._jsc is None  # SparkContext.stop() ran
    deadline = time.monotonic() + 10
    while server.socket.fileno() != -1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.socket.fileno() == -1  # closed by its shutdown thread
