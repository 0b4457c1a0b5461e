"""Ctrl-C and SIGTERM while a Spark session runs: never raised inside a py4j call, py4j's tracebacks off the
terminal (cifarflow.data.spark uses these around every session)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)


class _NotPy4j(logging.Filter):
    """Drops py4j's records: it logs a call cut short (Ctrl-C, SIGTERM, a JVM going away) on the *root* logger
    with a traceback each time, while the CLI reports the interruption itself in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from cifarflow.data.spark import verbose  # spark imports this module

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

    def __init__(self, context: SparkContext) -> None:
        self.context = context
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
            from cifarflow.data.spark import jvm_quiet  # spark imports this module

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
                self.context.cancelAllJobs()  # another thread: its own py4j connection
            if self._done.wait(0.1):
                return
            with self._lock:
                pending = self.pending
                if pending is None or self._held or self._done.is_set():
                    return
                signal.pthread_kill(main, pending[0])
