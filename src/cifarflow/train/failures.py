"""How a training process ends badly: the exit codes, the clean stop and the lost peer, and TensorFlow's own
errors turned back into cifarflow's one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cifarflow.errors import JobError, unmark

# Exit codes a TFJob with restartPolicy ExitCode retries (the training operator's IsRetryableExitCode): 130,
# 137, 143 (SIGINT, SIGKILL, SIGTERM) and 138, "user-defined retryable". 1 and 2 are permanent failures.
RETRYABLE = 138


class Interrupted(JobError):
    """A clean stop on SIGINT/SIGTERM: a checkpoint was saved, rerunning resumes. Exits 128 + the signal."""

    def __init__(self, problem: str, fix: str, *, signum: int) -> None:
        super().__init__(problem, fix)
        self.exit_code = 128 + signum


class PeerLost(JobError):
    """Another replica of the job died: this one cannot go on, but a restarted job resumes (retryable)."""

    exit_code = RETRYABLE


@contextlib.contextmanager
def translate_errors(*, multi_worker: bool, checkpoints_url: str) -> Iterator[None]:
    """TensorFlow wraps the input pipeline's errors and a lost peer in its own; give the user one line.

    ``checkpoints_url`` (already redacted) is named in the lost peer's fix: where the restarted job resumes.
    """
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as exc:
        original = unmark(exc.message or str(exc))
        if original is not None:
            raise original from None
        if multi_worker and isinstance(exc, tf.errors.UnavailableError | tf.errors.CancelledError):
            raise PeerLost(
                f"a worker of the job is gone, collectives were aborted ({_cause(exc.message)})",
                f"restart the job (a TFJob restarts failed replicas); training resumes from {checkpoints_url}",
            ) from None
        raise


def _cause(text: str | None) -> str:
    """The line of a gRPC/collective error that says what happened to the peer."""
    text = text or ""
    for marker in _PEER_GONE:
        if marker in text:
            return marker
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no details"


_PEER_GONE = (
    "Connection reset by peer",
    "Connection refused",
    "Socket closed",
    "failed to connect to all addresses",
    "is down",
    "Deadline Exceeded",
)
