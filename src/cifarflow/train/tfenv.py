"""TensorFlow's start-up chatter kept off the user's terminal: the one place that first imports TensorFlow.

Importing TensorFlow 2.21 on a machine without CUDA prints, from C++ and before its logging is configured (so
``TF_CPP_MIN_LOG_LEVEL`` does not reach them): the oneDNN notice and "could not find cuda drivers", each twice,
then ``E0000 … failed call to cuInit … (303)`` when devices are first listed, which reads as an error on a CPU
machine. Here the import and the device listing run with stderr (the file descriptor, where C++ writes) held
back, and only lines that are not such notices are passed on. With debug logging (``cifarflow -v``) everything is
shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)


def load() -> ModuleType:
    """``tensorflow``, imported (once) without its start-up notices unless debug logging is on."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if logging.getLogger("cifarflow").isEnabledFor(logging.DEBUG):
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines after start-up
    with _held_back_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA initialises here (cuInit's error on a CPU machine)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # SavedModel export's Python-side warnings
    return tf


@contextlib.contextmanager
def _held_back_stderr() -> Iterator[None]:
    """Collect what is written to file descriptor 2; afterwards pass on every line that is not :data:`NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line
                for line in held.read().splitlines(keepends=True)
                if not NOISE.search(line.decode(errors="replace"))
            ]
            if kept:
                os.write(2, b"".join(kept))
