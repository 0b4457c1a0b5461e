"""Pickles as Python 2's cPickle wrote CIFAR, with the image data streamed instead of held in memory."""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from cifarflow.data.cifar import IMAGE_BYTES
from cifarflow.data.synth.tarball import Member


class _Lazy:
    """A large byte string pickled without holding it: its size is known, its bytes come from ``parts``."""

    def __init__(self, size: int, parts: Callable[[], Iterable[bytes]]) -> None:
        self.size = size
        self.parts = parts


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote CIFAR.

    ``bytes`` become byte strings (BINSTRING), not the ``_codecs.encode`` calls Python 3 emits, so images are
    stored as-is (no 1.5x latin-1 blow-up) and ``encoding="bytes"`` loads them like the originals. Output goes
    to a list of pieces; a :class:`_Lazy` stays a placeholder whose bytes are streamed later.
    """

    def __init__(self) -> None:
        self.pieces: list[bytes | _Lazy] = []
        super().__init__(io.BytesIO(), protocol=2)
        self.write = self._append

    def _append(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(len(obj))
        self.pieces.append(bytes(obj))

    def save_lazy(self, obj: _Lazy) -> None:
        self._binstring(obj.size)
        self.pieces.append(obj)

    def _binstring(self, size: int) -> None:
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size))

    dispatch: ClassVar[dict[type, Any]] = {**pickle._Pickler.dispatch, bytes: save_bytes, _Lazy: save_lazy}


class LazyArray:
    """Pickles like a numpy uint8 array of shape (rows, 3072) without materialising it."""

    def __init__(self, rows: int, parts: Callable[[], Iterable[bytes]]) -> None:
        self.rows = rows
        self.parts = parts

    def __reduce__(self) -> tuple[Any, ...]:
        template = np.zeros((0,), dtype=np.uint8).__reduce__()
        reconstruct, args = template[0], template[1]
        state = (
            1,
            (self.rows, IMAGE_BYTES),
            np.dtype(np.uint8),
            False,
            _Lazy(self.rows * IMAGE_BYTES, self.parts),
        )
        return reconstruct, args, state


def pickle_member(name: str, obj: dict[bytes, Any], rows: int = 0) -> Member:
    """``obj`` as a protocol-2 pickle member whose ``LazyArray`` parts are produced only when written."""
    pickler = _Py2Pickler()
    pickler.dump(obj)
    # Join the small pieces (keys, labels, file names) so only the image data is streamed piecemeal.
    pieces: list[bytes | _Lazy] = []
    for piece in pickler.pieces:
        if isinstance(piece, bytes) and pieces and isinstance(pieces[-1], bytes):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    size = sum(p.size if isinstance(p, _Lazy) else len(p) for p in pieces)

    def parts() -> Iterator[bytes]:
        for piece in pieces:
            if isinstance(piece, _Lazy):
                yield from piece.parts()
            else:
                yield piece

    return Member(name, size, parts, rows)
