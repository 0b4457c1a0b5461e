"""Class-data sharing for the local Spark driver JVM: an archive of Spark's classes made once per JVM build and
classpath, used by later runs (cifarflow.data.spark starts the JVM with it)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# In local mode one JVM is the driver and every executor, yet it only schedules tasks and shuffles a few MB of
# small columns (images never enter it). A small starting heap, the serial collector and the quick (C1) JIT
# keep it from competing with the Python workers for a laptop's cores and memory: on 2 cores they halve its
# CPU time and take ~40% off its peak RSS (docs/benchmarks.md). No perf-data file in /tmp/hsperfdata_<user>:
# the JVM is ended by a kill once its context has stopped (cifarflow.data.spark.ended_by_driver).
LOCAL_JAVA_OPTIONS = "-Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData"
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
        code = "import sys; from cifarflow.data.jvm_archive import install_archive; install_archive(*sys.argv[1:])"
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
