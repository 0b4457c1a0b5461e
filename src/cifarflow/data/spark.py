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
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from cifarflow.errors import InputError, JobError

if TYPE_CHECKING:
    from pyspark import SparkConf
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
}


# In local mode one JVM is the driver and every executor, yet it only schedules tasks and shuffles a few MB of
# small columns (images never enter it). A small starting heap, the serial collector and the quick (C1) JIT
# keep it from competing with the Python workers for a laptop's cores and memory: on 2 cores they halve its
# CPU time and take ~40% off its peak RSS (docs/benchmarks.md).
LOCAL_JAVA_OPTIONS = "-Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
# The JVM's own log lines (class-data sharing's among them) go to stderr, through :class:`JvmStderr`, not to
# the terminal's stdout.
JVM_LOG_OPTIONS = "-Xlog:disable -Xlog:all=warning:stderr"


# -- class-data sharing (local mode) ------------------------------------------------------------------------
# A JVM that maps an archive of the classes an earlier run loaded starts Spark in about half the time
# (docs/benchmarks.md). An archive only fits the JVM build and classpath it was made from, so its name carries
# both. The run that finds none has its JVM write one as it exits (-XX:ArchiveClassesAtExit), under a
# temporary name; a detached helper waits for that JVM to exit, has a fresh JVM map the file with sharing
# required (a partial file would crash a JVM that maps it) and only then renames it into place. Whatever goes
# wrong, the JVM starts as before: nothing is printed, nothing fails.

CDS_MAGIC = (0xF00BABA8).to_bytes(4, "little")  # a JDK dynamic archive's first four bytes
CDS_BUSY_S = 600.0  # a temporary archive younger than this is another run's, still being written
CDS_WAIT_S = 24 * 3600.0  # how long the helper waits for the JVM to exit (a long `cifarflow run` keeps it)
# What Spark's launcher builds the classpath from, besides SPARK_HOME/jars.
CLASSPATH_ENV = ("SPARK_HOME", "SPARK_CONF_DIR", "SPARK_DIST_CLASSPATH", "HADOOP_CONF_DIR", "YARN_CONF_DIR")
# The JVM's class-data-sharing log lines ("[0.39s][warning][cds,dynamic] Unable to use shared archive...").
CDS_LINE = re.compile(r"\[[^\]]*\]\[\w+\s*\]\[cds")


def cds_enabled() -> bool:
    return os.environ.get("CIFARFLOW_SPARK_CDS", "1").strip().lower() not in ("0", "false", "no", "off")


def cds_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cifarflow" / "cds"


def java_binary() -> str | None:
    """The java Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.isfile(found) else None


def archive_name(java: str) -> str:
    """``spark-<pyspark>-java-<version>-<digest>.jsa``; the digest covers the JVM build, the jars, the
    environment the launcher builds the classpath from and the JVM options."""
    import pyspark
    from pyspark.find_spark_home import _find_spark_home

    home = Path(java).parents[1]
    release = (home / "release").read_text() if (home / "release").is_file() else ""
    version = re.search(r'JAVA_VERSION="([^"]+)"', release)
    jars = sorted(f"{p.name}:{p.stat().st_size}" for p in (Path(_find_spark_home()) / "jars").glob("*.jar"))
    libjvm = [f"{p}:{p.stat().st_mtime_ns}" for p in home.glob("lib/server/libjvm.so")]
    env = [f"{name}={os.environ.get(name, '')}" for name in CLASSPATH_ENV]
    digest = hashlib.sha256()
    for part in (java, release, *libjvm, LOCAL_JAVA_OPTIONS, *jars, *env):
        digest.update(part.encode() + b"\0")
    java_version = version.group(1) if version else "unknown"
    return f"spark-{pyspark.__version__}-java-{java_version}-{digest.hexdigest()[:16]}.jsa"


def _size_file(path: Path) -> Path:
    return path.with_name(path.name + ".size")  # the archive's size, written once it was checked


def archive_ok(path: Path) -> bool:
    """An installed archive, whole (its checked size) and a JDK archive (its magic)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(CDS_MAGIC))
        return magic == CDS_MAGIC and int(_size_file(path).read_text()) == path.stat().st_size
    except (OSError, ValueError):
        return False


def busy(folder: Path, name: str) -> bool:
    """Whether another run is writing this archive now; temporary files older than that are removed."""
    found = False
    for temporary in folder.glob(f"{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - temporary.stat().st_mtime < CDS_BUSY_S:
                found = True
            else:
                temporary.unlink()
    return found


@dataclass(frozen=True)
class ClassArchive:
    """This run's archive: ``path`` to map, or, when ``creating`` is set, the temporary file to write."""

    path: Path
    creating: Path | None = None

    @classmethod
    def for_this_jvm(cls) -> ClassArchive | None:
        """The archive to use or to create; None: start without one (switched off, no java, the cache
        folder unwritable, another run creating it)."""
        java = java_binary()
        if not cds_enabled() or java is None:
            return None
        try:
            folder = cds_folder()
            path = folder / archive_name(java)
            if archive_ok(path):
                return cls(path)
            folder.mkdir(parents=True, exist_ok=True)
            if busy(folder, path.name):
                return None
            for stale in (path, _size_file(path)):  # garbage, partial or foreign: made again
                stale.unlink(missing_ok=True)
            temporary = folder / f"{path.name}.{uuid.uuid4().hex[:12]}.tmp"
            temporary.touch(exist_ok=False)  # proves the folder writable, and marks the archive as in hand
            return cls(path, temporary)
        except OSError as exc:
            log.debug("starting Spark's JVM without a class-data-sharing archive: %s", exc)
            return None

    def options(self) -> str:
        if self.creating is None:
            return f"-XX:SharedArchiveFile={self.path} {JVM_LOG_OPTIONS}"
        # The archive's own notes come as the JVM exits, after this process stopped reading its stderr.
        return f"-XX:ArchiveClassesAtExit={self.creating} -Xlog:disable -Xlog:all=error:stderr"

    def install_after(self, pid: int, classpath: str) -> None:
        """Start the detached helper that installs the archive JVM ``pid`` writes as it exits."""
        code = "import sys; from cifarflow.data.spark import install_archive; install_archive(*sys.argv[1:])"
        command = [sys.executable, "-c", code, str(pid), str(self.creating), str(self.path), classpath]
        quiet = subprocess.DEVNULL
        try:
            subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=quiet, start_new_session=True)
        except OSError as exc:
            log.debug("cannot start the class-data-sharing helper: %s", exc)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    with contextlib.suppress(PermissionError):  # someone else's process: it exists
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            return True
        return False
    return True


def install_archive(pid: str, temporary: str, final: str, classpath: str) -> None:
    """The helper: once JVM ``pid`` has exited, a JVM that must map the archive (-Xshare:on) starts with it;
    if it does, the archive is renamed into place (its size file first), else it is removed."""
    tmp, path = Path(temporary), Path(final)
    try:
        deadline = time.monotonic() + CDS_WAIT_S
        while _running(int(pid)):
            if time.monotonic() > deadline:
                return
            time.sleep(1.0)
        java = java_binary()
        if java is None or tmp.stat().st_size == 0:
            return
        check = [
            java,
            f"-XX:SharedArchiveFile={tmp}",
            "-Xshare:on",
            "-XX:ErrorFile=/dev/null",
            "-Xlog:disable",
        ]
        quiet = subprocess.DEVNULL
        result = subprocess.run(
            [*check, "-cp", classpath, "-version"],
            check=False,
            stdin=quiet,
            stdout=quiet,
            stderr=quiet,
            timeout=120,
        )
        if result.returncode == 0:
            staged = _size_file(tmp)
            staged.write_text(str(tmp.stat().st_size))
            os.replace(staged, _size_file(path))
            os.replace(tmp, path)
    except (OSError, subprocess.SubprocessError):
        pass  # the next run without an archive tries again
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


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
    archive: ClassArchive | None = None
    if not submitted():
        # Only a JVM we start ourselves can take java options; log4j2 reads its file at start-up.
        quiet = "" if verbose() else f"-Dlog4j2.configurationFile=file:{log4j_config()}"
        local = ""
        if (resolved or "").startswith("local") and not spark_conf.contains("spark.driver.extraJavaOptions"):
            archive = ClassArchive.for_this_jvm()
            local = f"{LOCAL_JAVA_OPTIONS} {archive.options() if archive else JVM_LOG_OPTIONS}"
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
    if not submitted():
        launch_jvm(spark_conf, archive)
    spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    jvm_quiet(False)
    spark.sparkContext.setLogLevel("INFO" if verbose() else "WARN")
    return spark


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


# The filter of the one driver JVM this process started (a process has at most one).
_jvm: list[JvmStderr] = []


def jvm_quiet(quiet: bool) -> None:
    for pump in _jvm:
        pump.quiet.set() if quiet else pump.quiet.clear()


def launch_jvm(conf: SparkConf, archive: ClassArchive | None = None) -> None:
    """Start the driver JVM (unless one runs already) with its stderr through :class:`JvmStderr`; if it is
    to write a class-data-sharing archive at exit, have that archive checked and installed afterwards."""
    from pyspark import SparkContext
    from pyspark.errors import PySparkRuntimeError
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    read_end, write_end = os.pipe()
    jvm_stderr = JvmStderr(os.fdopen(read_end, "rb"))
    _jvm[:] = [jvm_stderr]
    jvm_stderr.quiet.set()  # start-up output only matters if the start fails, and then it is summarised
    try:
        gateway = launch_gateway(conf, popen_kwargs={"stderr": write_end})
    except PySparkRuntimeError as exc:
        if exc.getCondition() != "JAVA_GATEWAY_EXITED":
            raise
        time.sleep(0.2)  # let the reader take the JVM's last lines
        raise JobError(
            f"Spark's JVM exited while starting: {jvm_stderr.failure()}",
            "check Java 17+ (JAVA_HOME), --master and PYSPARK_SUBMIT_ARGS; -v shows the JVM's output",
        ) from None
    finally:
        os.close(write_end)  # the JVM holds its own copy
    SparkContext._ensure_initialized(gateway=gateway, conf=conf)
    if archive is not None and archive.creating and gateway.proc is not None:
        classpath = str(gateway.jvm.System.getProperty("java.class.path"))
        archive.install_after(gateway.proc.pid, classpath)


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
    with _interruptible():
        spark = build(master, app_name, conf)
        with Signals(spark) as signals:
            log.info(
                "Spark %s, master %s, default parallelism %d",
                spark.version,
                spark.sparkContext.master,
                spark.sparkContext.defaultParallelism,
            )
            try:
                forward_env(spark)
                yield spark
            except BaseException:
                signals.hold()  # the session raises a deferred signal itself, once Spark has stopped
                quiesce(spark)
                raise
            finally:
                spark.stop()


class _NotPy4j(logging.Filter):
    """Drops py4j's records: it logs a call cut short (Ctrl-C, SIGTERM, a JVM going away) on the *root* logger
    with a traceback each time, while the CLI reports the interruption itself in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or f"{os.sep}py4j{os.sep}" not in record.pathname


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and py4j's logging while a session runs.

    SparkContext's SIGINT handler is replaced once the session has started (:class:`Signals`); the one that was
    there before the session is restored afterwards. A filter on the root logger (it sees only records logged on
    the root itself, as py4j does) keeps py4j's records off the terminal, and a root handler like
    :data:`logging.lastResort` keeps them from triggering ``logging.basicConfig`` when nothing else set logging
    up.
    """
    root = logging.getLogger()
    quiet = _NotPy4j()
    root.addFilter(quiet)
    handler = None if root.handlers else logging.StreamHandler()
    if handler is not None:
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if handler is not None:
            root.removeHandler(handler)
        if main:
            signal.signal(signal.SIGINT, previous)


PY4J_PATH = f"{os.sep}py4j{os.sep}"


def in_py4j(frame: FrameType | None) -> bool:
    """Whether ``frame`` (where a signal interrupted the main thread) is inside a py4j call."""
    while frame is not None:
        if PY4J_PATH in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class Signals:
    """Ctrl-C (SIGINT) and SIGTERM while a session runs: their exceptions are never raised inside a py4j call.

    The main thread waits inside a py4j call for most Spark actions. An exception raised there (Python runs the
    handler where the signal lands) makes py4j shut that connection down, and the clean-up that runs while it
    unwinds (the job description, ``unpersist``, a broadcast's ``destroy``: more py4j calls) then fails with
    "Answer from Java side is empty", an error that *replaces* the interruption: exit 2 and "the Spark job
    failed" instead of exit 130 and "interrupted", about two Ctrl-Cs in three. So a signal that lands in a py4j
    call is deferred: a helper thread cancels the jobs (the waiting call returns with their error) and sends the
    signal to the main thread again until it lands in Python code, where the handler's exception (SIGINT:
    KeyboardInterrupt; SIGTERM: the CLI's) is raised as usual; if the jobs' error reaches the session first,
    the session raises it once Spark has stopped. SparkContext's own SIGINT handler (it calls the JVM from
    inside the handler) is replaced too.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.pending: tuple[int, Callable[[int, FrameType | None], Any]] | None = None
        self._held = False
        self._done = threading.Event()
        self._lock = threading.Lock()  # no signal is sent to the main thread once the handlers are restored
        self._previous: dict[int, Any] = {}
        self._helper: threading.Thread | None = None

    def __enter__(self) -> Signals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread gets signals (an embedding program keeps its handlers)
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            inner = signal.default_int_handler if signum == signal.SIGINT else current
            if callable(inner):  # a default or ignored SIGTERM stays as it is: no Python clean-up runs
                self._previous[signum] = current
                signal.signal(signum, functools.partial(self._handle, inner=inner))
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done.set()
            for signum, previous in self._previous.items():
                # SIGINT: Python's own handler (SparkContext's would call a JVM that has stopped).
                signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else previous)
        if self._helper is not None:
            self._helper.join(timeout=5)
        self.raise_pending()

    def hold(self) -> None:
        """An error is unwinding the session: defer every signal until the session has stopped Spark."""
        self._held = True

    def raise_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            signum, inner = pending
            inner(signum, None)

    def _handle(self, signum: int, frame: FrameType | None, *, inner: Callable[..., Any]) -> None:
        if not self._held and not in_py4j(frame):
            self.pending = None
            inner(signum, frame)  # raises: the usual KeyboardInterrupt (or the CLI's Terminated)
            return
        if self.pending is None:
            self.pending = (signum, inner)
            jvm_quiet(True)  # cancelled tasks are not news: the interruption's line says what happened
            if self._helper is None or not self._helper.is_alive():
                self._helper = threading.Thread(target=self._cancel, name="spark-signal", daemon=True)
                self._helper.start()

    def _cancel(self) -> None:
        """Cancel the jobs until the main thread has taken the deferred signal."""
        main = threading.main_thread().ident
        assert main is not None
        while not self._done.is_set():
            with contextlib.suppress(Exception):  # the JVM may be going away
                self.spark.sparkContext.cancelAllJobs()  # another thread: its own py4j connection
            if self._done.wait(0.1):
                return
            with self._lock:
                pending = self.pending
                if pending is None or self._held or self._done.is_set():
                    return
                signal.pthread_kill(main, pending[0])


def quiesce(spark: SparkSession, timeout: float = 20.0) -> None:
    """After a failed or interrupted job: cancel what still runs and wait until its tasks have ended.

    A failed job returns while its other tasks are still being killed; stopping the session then races with
    their status updates (Spark logs ``RejectedExecutionException`` stacks, Python workers die mid-handshake
    and print tracebacks). Waiting for the executors to report no running task takes that race away.
    """
    jvm_quiet(True)  # the job's own error line says what happened; the rest is Spark winding down
    with contextlib.suppress(Exception):  # best effort: the session may be half gone already
        context = spark.sparkContext
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
