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

import atexit
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import IO, TYPE_CHECKING

from cifarflow.data.jvm_archive import CDS_LINE, JVM_LOG_OPTIONS, LOCAL_JAVA_OPTIONS, ClassArchive
from cifarflow.data.spark_signals import Signals, _interruptible
from cifarflow.errors import InputError, JobError

if TYPE_CHECKING:
    from pyspark import SparkConf, SparkContext
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
    # Workers import the installed pyspark's cached bytecode, not Spark's zip compiled anew in each process.
    "spark.python.daemon.module": "cifarflow.data.spark_daemon",
}


def submitted() -> bool:
    """Whether this process is a driver that spark-submit started (the JVM and the master already exist)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# What SparkContext accepts as a master (Spark 4: no Mesos); anything else makes the JVM exit at start-up.
MASTER_PATTERN = re.compile(r"local(\[(\*|\d+)(,\s*\d+)?\])?|local-cluster\[.+\]|yarn|(spark|k8s)://.+")


def check_master(master: str | None) -> None:
    """Refuse a --master Spark would not start with, before anything else runs."""
    if master and not MASTER_PATTERN.fullmatch(master):
        raise InputError(
            f"--master {master!r} is not a Spark master URL",
            "pass local[*], local[N], spark://HOST:7077 or k8s://https://HOST:PORT, or leave --master out",
        )


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


class Spark:
    """One Spark application as cifarflow's jobs use it: its :class:`SparkContext` (every RDD job), and a
    :class:`SparkSession` made on first use. A session starts Spark SQL's engine (~0.5 s of a cold local JVM),
    which only the jobs that query pay for: pass 1 over content indexes and pass 2 run RDD jobs only."""

    def __init__(self, context: SparkContext, session: SparkSession | None = None) -> None:
        self.context = context
        self._session = session

    @property
    def sql(self) -> SparkSession:
        if self._session is None:
            from pyspark.sql import SparkSession

            self._session = SparkSession.builder.getOrCreate()  # around the running context, with its conf
        return self._session


def build(
    master: str | None = None, app_name: str = "cifarflow", conf: Mapping[str, str] | None = None
) -> SparkContext:
    """Create a SparkContext (or return the running one) set up as the module docstring says."""
    from pyspark import SparkConf, SparkContext

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
    for key, value in (conf or {}).items():
        spark_conf.set(key, value)
    archive: ClassArchive | None = None
    scratch: str | None = None
    if not submitted():
        # Only a JVM we start ourselves can take java options; log4j2 reads its file at start-up.
        quiet = "" if verbose() else f"-Dlog4j2.configurationFile=file:{log4j_config()}"
        local = ""
        if (resolved or "").startswith("local") and not spark_conf.contains("spark.driver.extraJavaOptions"):
            archive = ClassArchive.for_this_jvm()
            local = f"{LOCAL_JAVA_OPTIONS} {archive.options() if archive else JVM_LOG_OPTIONS}"
            if ended_by_driver(spark_conf, archive):
                scratch = tempfile.mkdtemp(prefix="cifarflow-spark-")
                spark_conf.set("spark.local.dir", scratch)
                local = f"{local} '-Djava.io.tmpdir={scratch}'"  # quoted: Spark splits the options as a shell does
        for key, options in (
            ("spark.driver.extraJavaOptions", f"{local} {quiet}"),
            ("spark.executor.extraJavaOptions", quiet),
        ):
            if options.strip():
                spark_conf.setIfMissing(key, options.strip())
    for name in SETTINGS_ENV:
        if os.environ.get(name):
            spark_conf.setIfMissing(f"spark.executorEnv.{name}", os.environ[name])
    log.debug("starting Spark (master %s)", resolved or "from spark-submit")
    if not submitted():
        launch_jvm(spark_conf, archive, scratch)
    try:
        context = SparkContext.getOrCreate(spark_conf)
    except BaseException:
        end_jvm()  # the context never started: nothing of ours is left running or on disk
        raise
    jvm_quiet(False)
    context.setLogLevel("INFO" if verbose() else "WARN")
    return context


# Spark's launcher adds --add-modules=jdk.incubator.vector to every JVM it starts (for its vectorised BLAS, which
# cifarflow never calls), and the JVM then prints this on every start. Removing it means patching Spark's
# launcher jar; dropping the line costs nothing.
INCUBATOR_WARNING = "WARNING: Using incubator modules"
JAVA_FRAME_PREFIXES = ("\tat ", "\t... ", "Caused by: ")


class JvmStderr:
    """The driver JVM's stderr (log4j's console, the Python workers' stderr, the JVM's own warnings), passed on to
    ours minus what a user cannot act on: the incubator-module warning, Java stack frames and Python worker
    tracebacks, and everything while the JVM starts or after a job failed or was interrupted (the driver then
    reports the cause in one line). ``--verbose`` passes everything."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.quiet = threading.Event()
        self.recent: deque[str] = deque(maxlen=50)
        self._stream = stream
        self._in_traceback = False
        threading.Thread(target=self._pump, name="jvm-stderr", daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self.recent.append(line.rstrip("\n"))
            if self.shown(line) or verbose():
                # os.write, not sys.stderr: no Python lock to trip over while the interpreter exits.
                with contextlib.suppress(OSError):
                    os.write(2, raw)

    def shown(self, line: str) -> bool:
        """Whether ``line`` reaches the terminal (tracks Python traceback blocks across calls)."""
        if self._in_traceback:
            # A traceback ends with its first unindented line (the exception itself).
            self._in_traceback = line[:1].isspace()
            return False
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            return False
        if self.quiet.is_set() or line.startswith(INCUBATOR_WARNING) or CDS_LINE.match(line):
            return False
        return not line.startswith(JAVA_FRAME_PREFIXES)

    def failure(self) -> str:
        """The JVM's own reason for exiting, from its last lines (an exception's message)."""
        lines = [x.strip() for x in self.recent if x.strip() and not x.startswith(JAVA_FRAME_PREFIXES)]
        found = [x for x in lines if "Exception" in x or "Error" in x]
        text = (found or lines or ["no output"])[-1]
        return text.split(": ", 1)[-1] if "Exception" in text.split(": ", 1)[0] else text


@dataclass
class DriverJvm:
    """The driver JVM this process started: its stderr's filter, and what :func:`stop` ends."""

    stderr: JvmStderr
    proc: subprocess.Popen[bytes] | None = None
    scratch: str | None = None  # its java.io.tmpdir and spark.local.dir when stop() ends it (ended_by_driver)


# The one driver JVM this process started (a process has at most one at a time).
_jvm: list[DriverJvm] = []


def jvm_quiet(quiet: bool) -> None:
    for driver in _jvm:
        driver.stderr.quiet.set() if quiet else driver.stderr.quiet.clear()


def ended_by_driver(conf: SparkConf, archive: ClassArchive | None) -> bool:
    """Whether :func:`stop` ends the local JVM itself once the context has stopped: unless it is to write a
    class-data-sharing archive as it exits, or the user chose where Spark keeps its files.

    Java 17's exit waits 300 ms for threads blocked in native calls (py4j's sockets, the gateway's stdin
    watch); a stopped context leaves nothing that needs the JVM's own exit but its temporary files, which
    live in a folder of our own (java.io.tmpdir, spark.local.dir) that :func:`stop` removes."""
    writing = archive is not None and archive.creating is not None
    chosen = conf.contains("spark.local.dir") or "SPARK_LOCAL_DIRS" in os.environ
    return not writing and not chosen


def launch_jvm(conf: SparkConf, archive: ClassArchive | None = None, scratch: str | None = None) -> None:
    """Start the driver JVM (unless one runs already) with its stderr through :class:`JvmStderr`; if it is
    to write a class-data-sharing archive at exit, have that archive checked and installed afterwards.
    ``scratch``: its temporary folder, when :func:`stop` is to end it (:func:`ended_by_driver`)."""
    from pyspark import SparkContext
    from pyspark.errors import PySparkRuntimeError
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    read_end, write_end = os.pipe()
    jvm_stderr = JvmStderr(os.fdopen(read_end, "rb"))
    _jvm[:] = [DriverJvm(jvm_stderr)]
    jvm_stderr.quiet.set()  # start-up output only matters if the start fails, and then it is summarised
    imports = threading.Thread(target=_import_converters_needs, name="pyspark-imports", daemon=True)
    imports.start()
    try:
        gateway = launch_gateway(conf, popen_kwargs={"stderr": write_end})
    except BaseException as exc:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if archive is not None and archive.creating is not None:
            archive.creating.unlink(missing_ok=True)  # the marker of an archive no JVM will write
        if not isinstance(exc, PySparkRuntimeError) or exc.getCondition() != "JAVA_GATEWAY_EXITED":
            raise
        time.sleep(0.2)  # let the reader take the JVM's last lines
        raise JobError(
            f"Spark's JVM exited while starting: {jvm_stderr.failure()}",
            "check Java 17+ (JAVA_HOME), --master and PYSPARK_SUBMIT_ARGS; -v shows the JVM's output",
        ) from None
    finally:
        os.close(write_end)  # the JVM holds its own copy
        imports.join()  # done by now (the JVM's start takes longer); none is left half-done at an exit
    _jvm[0].proc, _jvm[0].scratch = gateway.proc, scratch
    SparkContext._ensure_initialized(gateway=gateway, conf=conf)
    if archive is not None and archive.creating and gateway.proc is not None:
        classpath = str(gateway.jvm.System.getProperty("java.class.path"))
        archive.install_after(gateway.proc.pid, classpath)


def _import_converters_needs() -> None:
    """Import what PySpark's py4j converters import on the first call into the JVM (``pyspark.testing.utils``,
    and with it pandas: ~0.2 s), while the driver waits for the JVM to start rather than after."""
    with contextlib.suppress(Exception):  # the converters import it themselves, and report any failure
        import pyspark.testing.utils  # noqa: F401


def forward_env(context: SparkContext) -> None:
    """Send the driver's current storage settings and credentials with every Python task from now on.

    PySpark ships ``SparkContext.environment`` with each Python function and starts the workers with it, so
    this works on any master and picks up values set after the session started (tests start servers late).
    """
    env = context.environment
    for name in (*SETTINGS_ENV, *SECRET_ENV):
        value = os.environ.get(name)
        if value:
            env[name] = value
        else:
            env.pop(name, None)


@contextlib.contextmanager
def session(
    master: str | None = None, app_name: str = "cifarflow", conf: Mapping[str, str] | None = None
) -> Iterator[Spark]:
    """Spark for one job: the running application if there is one (tests, notebooks), else a new one that is
    stopped afterwards (so a long ``cifarflow run`` frees the JVM before training)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkContext._active_spark_context
    if active is not None:
        if master and master != active.master:
            log.warning(
                "using the running Spark application (master %s), not --master %s", active.master, master
            )
        forward_env(active)
        yield Spark(active, SparkSession.getActiveSession())
        return
    with _interruptible():
        context = build(master, app_name, conf)
        with Signals(context) as signals:
            log.info(
                "Spark %s, master %s, default parallelism %d",
                context.version,
                context.master,
                context.defaultParallelism,
            )
            failed = False
            try:
                forward_env(context)
                yield Spark(context)
            except BaseException:
                failed = True
                signals.hold()  # the session raises a deferred signal itself, once Spark has stopped
                quiesce(context)
                raise
            finally:
                stop(context, end_jvm_now=not failed)


def stop(context: SparkContext, *, end_jvm_now: bool = True) -> None:
    """Stop the session without waiting ~1 s for PySpark's accumulator server: its handler polls its socket
    once a second for the stop flag, and ``SparkContext.stop()`` waits for that poll. The flag is set first
    and the server is shut down by a daemon thread instead (it closes its socket within the second).

    Then :func:`end_jvm`; ``end_jvm_now=False`` (a failed job: PySpark's exceptions ask the JVM for their
    text) leaves that to the process's exit."""
    from pyspark.sql import SparkSession

    server = getattr(context, "_accumulatorServer", None)
    if server is not None and hasattr(server, "server_shutdown"):
        server.server_shutdown = True  # the handler's loop ends at its next poll
        # Its connection ends when the JVM does (end_jvm), perhaps before that poll: an EOF, not an error.
        server.handle_error = lambda request, client_address: None
        context._accumulatorServer = None  # type: ignore[assignment]  # so stop() does not wait for it
        threading.Thread(target=server.shutdown, name="accumulator-server-shutdown", daemon=True).start()
    session = SparkSession._instantiatedSession
    if session is not None and session.sparkContext is context:
        session.stop()  # the context, and the session's own state: a later one starts afresh
    else:
        context.stop()
    if end_jvm_now:
        end_jvm()
    else:
        atexit.register(end_jvm)


def end_jvm() -> None:
    """End the stopped driver JVM this process started, if it is ours to end (:func:`ended_by_driver`), and
    remove its temporary folder; a later session starts a new JVM."""
    from pyspark import SparkContext

    if not _jvm or _jvm[0].scratch is None or _jvm[0].proc is None:
        return
    driver = _jvm.pop()
    gateway, SparkContext._gateway, SparkContext._jvm = SparkContext._gateway, None, None
    if gateway is not None:
        with contextlib.suppress(Exception):
            gateway.close()  # our side's sockets only: nothing is sent to the JVM
    assert driver.proc is not None and driver.scratch is not None
    driver.proc.kill()
    driver.proc.wait()
    shutil.rmtree(driver.scratch, ignore_errors=True)


def quiesce(context: SparkContext, timeout: float = 20.0) -> None:
    """After a failed or interrupted job: cancel what still runs and wait until its tasks have ended.

    A failed job returns while its other tasks are still being killed; stopping the session then races with
    their status updates (Spark logs ``RejectedExecutionException`` stacks, Python workers die mid-handshake
    and print tracebacks). Waiting for the executors to report no running task takes that race away.
    """
    jvm_quiet(True)  # the job's own error line says what happened; the rest is Spark winding down
    with contextlib.suppress(Exception):  # best effort: the session may be half gone already
        context.cancelAllJobs()
        tracker = context._jsc.sc().statusTracker()  # the Scala tracker: it counts running tasks per executor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(info.numRunningTasks() for info in tracker.getExecutorInfos()):
                return
            time.sleep(0.1)
        log.debug("tasks still running %.0f s after the job ended; stopping Spark anyway", timeout)


class StageProgress:
    """Show the running Spark stage's tasks as a progress bar on the driver's terminal (none in logs/CI)."""

    def __init__(self, context: SparkContext, description: str, interval: float = 0.5) -> None:
        self.context = context
        self.description = description
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageProgress:
        self.context.setJobDescription(self.description)
        from cifarflow.log import console

        if console.is_terminal:
            self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.context.setJobDescription(None)  # type: ignore[arg-type]

    def _run(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cifarflow.log import console

        tracker = self.context.statusTracker()
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
