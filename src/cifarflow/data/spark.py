"""A SparkSession for cifarflow's jobs, set up alike in local mode, on a cluster and under spark-submit.

- The master is ``--master`` if given, else the one spark-submit (or the Spark Operator) started the driver
  with, else ``local[*]``.
- Executors' Python is the driver's (``PYSPARK_PYTHON=sys.executable``) unless the environment says otherwise.
- Tasks reach the buckets themselves (fsspec), so the storage settings the driver sees are forwarded to the
  Python workers: endpoints and regions as ``spark.executorEnv.*``, credentials only with the tasks (never in
  the Spark conf, so they appear on no UI page and in no event log).
- Logging is quiet: warnings and errors only, no start-up chatter, no per-task stack traces (the driver
  re-raises a failed task's own one-line error).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Storage settings every task needs; safe to show in the Spark UI.
SETTINGS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "STORAGE_EMULATOR_HOST",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    "NO_PROXY",
    "no_proxy",
    "CIFARFLOW_TASK_DELAY_S",  # test hook: slows every task down (see preprocess)
)
# Credentials (and proxies, which may embed some): sent with the tasks only.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)

# Defaults for a small, quick job; anything given to spark-submit (--conf) wins over them.
DEFAULTS: Mapping[str, str] = {
    # Only small columns (ids, hashes, keys: ~60 B an image) are ever shuffled: a few partitions hold them, and
    # adaptive execution's re-planning after every shuffle costs more CPU than it saves.
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.ui.showConsoleProgress": "false",  # cifarflow draws its own progress
    "spark.python.worker.reuse": "true",
}


# In local mode one JVM is the driver and every executor, yet it only schedules tasks and shuffles a few MB of
# small columns (images never enter it). A small starting heap, the serial collector and the quick (C1) JIT
# keep it from competing with the Python workers for a laptop's cores and memory: on 2 cores they halve its
# CPU time and take ~40% off its peak RSS (docs/benchmarks.md).
LOCAL_JAVA_OPTIONS = "-Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def submitted() -> bool:
    """Whether this process is a driver that spark-submit started (the JVM and the master already exist)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def resolve_master(master: str | None) -> str | None:
    """``master`` if given; ``None`` (spark-submit's own) under spark-submit; else ``local[*]``."""
    if master:
        return master
    return None if submitted() else "local[*]"


def log4j_config() -> str:
    """Path of cifarflow's quiet log4j2 configuration (shipped in the package, so executors have it too)."""
    return str(resources.files("cifarflow.data").joinpath("log4j2.properties"))


def ui_enabled(master: str | None) -> bool:
    """Web UI: on for clusters, off for local runs (a port, start-up time); CIFARFLOW_SPARK_UI overrides."""
    env = os.environ.get("CIFARFLOW_SPARK_UI")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    return not (master or "").startswith("local")


def verbose() -> bool:
    return logging.getLogger("cifarflow").getEffectiveLevel() <= logging.DEBUG


def build(
    master: str | None = None, app_name: str = "cifarflow", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """Create a SparkSession (or return the existing one) set up as the module docstring says."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    resolved = resolve_master(master)
    if submitted():
        # Connect to spark-submit's JVM first so that SparkConf() holds the submitted settings and the
        # defaults below only fill gaps.
        SparkContext._ensure_initialized()
    spark_conf = SparkConf()
    if resolved:
        spark_conf.setMaster(resolved)
    spark_conf.setIfMissing("spark.app.name", app_name)
    for key, value in DEFAULTS.items():
        spark_conf.setIfMissing(key, value)
    spark_conf.setIfMissing("spark.ui.enabled", str(ui_enabled(resolved)).lower())
    if not submitted():
        # Only a JVM we start ourselves can take java options; log4j2 reads its file at start-up.
        quiet = "" if verbose() else f"-Dlog4j2.configurationFile=file:{log4j_config()}"
        local = LOCAL_JAVA_OPTIONS if (resolved or "").startswith("local") else ""
        for key, options in (
            ("spark.driver.extraJavaOptions", f"{local} {quiet}"),
            ("spark.executor.extraJavaOptions", quiet),
        ):
            if options.strip():
                spark_conf.setIfMissing(key, options.strip())
    for name in SETTINGS_ENV:
        if os.environ.get(name):
            spark_conf.setIfMissing(f"spark.executorEnv.{name}", os.environ[name])
    for key, value in (conf or {}).items():
        spark_conf.set(key, value)
    log.debug("starting Spark (master %s)", resolved or "from spark-submit")
    spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    spark.sparkContext.setLogLevel("INFO" if verbose() else "WARN")
    return spark


def forward_env(spark: SparkSession) -> None:
    """Send the driver's current storage settings and credentials with every Python task from now on.

    PySpark ships ``SparkContext.environment`` with each Python function and starts the workers with it, so
    this works on any master and picks up values set after the session started (tests start servers late).
    """
    env = spark.sparkContext.environment
    for name in (*SETTINGS_ENV, *SECRET_ENV):
        value = os.environ.get(name)
        if value:
            env[name] = value
        else:
            env.pop(name, None)


@contextlib.contextmanager
def session(
    master: str | None = None, app_name: str = "cifarflow", conf: Mapping[str, str] | None = None
) -> Iterator[SparkSession]:
    """A SparkSession for one job: the active one if there is one (tests, notebooks), else a new one that is
    stopped afterwards (so a long ``cifarflow run`` frees the JVM before training)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        current = active.sparkContext.master
        if master and master != current:
            log.warning("using the active Spark session (master %s), not --master %s", current, master)
        forward_env(active)
        yield active
        return
    spark = build(master, app_name, conf)
    log.info(
        "Spark %s, master %s, default parallelism %d",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    try:
        forward_env(spark)
        yield spark
    finally:
        spark.stop()


class StageProgress:
    """Show the running Spark stage's tasks as a progress bar on the driver's terminal (none in logs/CI)."""

    def __init__(self, spark: SparkSession, description: str, interval: float = 0.5) -> None:
        self.spark = spark
        self.description = description
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageProgress:
        self.spark.sparkContext.setJobDescription(self.description)
        from cifarflow.log import console

        if console.is_terminal:
            self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]

    def _run(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cifarflow.log import console

        tracker = self.spark.sparkContext.statusTracker()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(self.description, total=None)
            while not self._stop.wait(self.interval):
                with contextlib.suppress(Exception):  # the context may stop under us; progress is cosmetic
                    infos = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
                    stages = [s for s in infos if s is not None]
                    if stages:
                        done = sum(s.numCompletedTasks for s in stages)
                        total = sum(s.numTasks for s in stages)
                        bar.update(task, completed=done, total=total)
