"""Big buffers kept for reuse between batches (glibc; elsewhere nothing changes).

glibc gives a freed block of more than 128 KB back to the kernel at once (its threshold only rises to the
size last freed), so each ~30 MB batch buffer (a pickle, a range of images, a shard, a decompressed block)
is page-faulted and zeroed afresh. At 10x CIFAR that was 2-3 s of kernel time in ingest and ~1.5 s in pass 2
on two cores. Raising the mmap and trim thresholds keeps freed blocks in the heap, where the next batch
reuses them; blocks over :data:`MMAP_THRESHOLD` (a 1.5 GB pickle) still go back to the kernel when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator

# mallopt's parameters (glibc's malloc.h) and its defaults for both thresholds.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULT = 128 * 1024
MMAP_THRESHOLD = 256 << 20  # blocks up to this come from the heap and stay there when freed
TRIM_THRESHOLD = (1 << 31) - 1  # free heap kept before any is handed back (mallopt takes an int)


def _libc(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # no such function: not glibc
        return None


def keep_freed_memory() -> bool:
    """Keep freed blocks for reuse from now on; False where the C library has no such setting."""
    mallopt = _libc("mallopt")
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """:func:`keep_freed_memory` for the block, then glibc's thresholds again and the kept memory returned."""
    if not keep_freed_memory():
        yield
        return
    try:
        yield
    finally:
        mallopt, trim = _libc("mallopt"), _libc("malloc_trim")
        assert mallopt is not None and trim is not None  # glibc: both exist
        mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT)
        mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT)
        trim(0)
