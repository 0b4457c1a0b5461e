"""A clean stop: SIGINT/SIGTERM (Ctrl-C, Kubernetes stopping the pod) set a flag that the loop passes into
every step, where it is all-reduced, so that every worker of the job stops after the same step."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)


class StopRequest:
    """Whether a stop was asked for, and by which signal (the exit code is 128 + its number)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal = ""
        self.signum = int(signal.SIGINT)

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask for a clean stop while inside; the previous handlers come back on the way out."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            self.signal = signal.Signals(signum).name
            self.signum = signum
            self._event.set()
            log.warning("%s received: stopping within two steps and saving a checkpoint", self.signal)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
