"""The training side of the dataset contract: a committed dataset, checked, read as large numpy chunks.

No TensorFlow here: bad input is refused before the heavy engine starts, and evaluation and benchmarks reuse
the reader. Images come out of Parquet a row group at a time, without a per-image Python call: the ``image``
column's data buffer is one block of ``rows * H * W * 3`` bytes, viewed in place as ``(rows, H, W, 3)`` uint8,
at whatever size the manifest records. Shuffling and batching happen here too, vectorised per batch in numpy:
tf.data's per-element ``unbatch`` -> ``shuffle`` -> ``batch`` costs about 5 microseconds of CPU per image,
which alone would cap a core at 200k images/s.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data import manifest as mf
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

# Every model takes RGB; the height and width are the dataset's (the manifest's ``image``), whatever they are.
CHANNELS = 3
# The smallest side the models take: ResNet-20 halves it twice and ResNet-9 three times.
MIN_SIDE = 8


@dataclass(frozen=True)
class DataSource:
    """A committed dataset: manifest, folder URL, train-split statistics, and the store to read it with."""

    store: Store
    manifest: mf.Manifest
    base: str
    stats: mf.Stats

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def shape(self) -> tuple[int, int, int]:
        spec = self.manifest.image
        return spec.height, spec.width, spec.channels

    def files(self, split: str) -> list[mf.FileEntry]:
        return [f for f in self.manifest.files(split) if f.rows > 0]

    def rows(self, split: str) -> int:
        return self.manifest.splits[split].rows if split in self.manifest.splits else 0

    def has(self, split: str) -> bool:
        return self.rows(split) > 0

    def chunks(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All of a split, file after file, as ``(images uint8 (n,H,W,C), labels int32 (n,))``."""
        for entry in self.files(split):
            yield from read_shard(self, entry)


def open_source(store: Store, url: str) -> DataSource:
    """Load and check a dataset for training: committed, HWC uint8 RGB of any size, statistics present and sane."""
    manifest, base = mf.load(store, url)
    check_image(manifest)
    if manifest.num_classes < 2 or len(manifest.class_names) != manifest.num_classes:
        raise InputError(
            f"dataset {manifest.dataset_id} declares {manifest.num_classes} classes and "
            f"{len(manifest.class_names)} class names",
            "re-run `cifarflow preprocess`",
        )
    stats = mf.load_stats(store, manifest, base)
    if len(stats.mean) != CHANNELS or len(stats.std) != CHANNELS or min(stats.std) <= 0:
        raise InputError(
            f"{redact(join(base, mf.STATS))} has no usable per-channel mean/std",
            "re-run `cifarflow preprocess` (the train split must not be empty)",
        )
    return DataSource(store=store, manifest=manifest, base=base, stats=stats)


def check_image(manifest: mf.Manifest) -> None:
    """The models take HWC uint8 RGB images of at least MIN_SIDE pixels a side; the size is the dataset's."""
    image = manifest.image
    shape = f"{image.height}x{image.width}x{image.channels} {image.layout} {image.dtype}"
    if image.channels != CHANNELS or min(image.height, image.width) < MIN_SIDE:
        raise InputError(
            f"dataset {manifest.dataset_id} holds {shape} images, the models take HWC uint8 RGB images of "
            f"at least {MIN_SIDE}x{MIN_SIDE}",
            "preprocess the images to RGB (3 channels) of a size the models take, e.g. --image-size 32",
        )


def read_shard(source: DataSource, entry: mf.FileEntry) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One checksum-verified shard as ``(images, labels)`` chunks, one per Parquet row group."""
    yield from _decode_shard(
        source, mf.read_checked(source.store, source.base, entry), entry_url(source, entry)
    )


def _decode_shard(source: DataSource, data: bytes, url: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Whole row groups (2048 rows as preprocess writes them) decode 3x cheaper than re-chunked record batches
    (750k vs 230k images per CPU-second measured), and bound memory to one group per open file."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["image", "label"], use_threads=False)
            for batch in table.to_batches():
                yield decode_batch(batch, source.shape, source.num_classes, url)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{url} is not a readable Parquet shard: {exc}", "re-run `cifarflow preprocess`"
        ) from exc


def decode_batch(
    batch: pa.RecordBatch, shape: tuple[int, int, int], num_classes: int, url: str
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views of a record batch: images ``(n, H, W, C)`` uint8 and labels ``(n,)`` int32."""
    images = _images(batch.column("image"), shape, url)
    labels_col = batch.column("label")
    if labels_col.null_count:
        raise InputError(f"{url} has rows without a label", "re-run `cifarflow preprocess`")
    labels = labels_col.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"{url} has labels outside 0..{num_classes - 1}",
            "re-run `cifarflow preprocess`; the manifest and the shards disagree",
        )
    return images, labels


def _images(column: pa.Array, shape: tuple[int, int, int], url: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    size = int(np.prod(shape))
    if column.null_count:
        raise InputError(f"{url} has rows without an image", "re-run `cifarflow preprocess`")
    offsets_buf, data_buf = column.buffers()[1], column.buffers()[2]
    width = 8 if pa.types.is_large_binary(column.type) else 4
    offsets = np.frombuffer(
        offsets_buf, dtype=np.int64 if width == 8 else np.int32, count=n + 1, offset=column.offset * width
    )
    if n and (offsets[-1] - offsets[0] != n * size or np.any(np.diff(offsets) != size)):
        sizes = np.unique(np.diff(offsets))
        raise InputError(
            f"{url} holds images of {sizes[:3].tolist()} bytes, its manifest says {size} "
            f"({'x'.join(map(str, shape))} uint8)",
            "re-run `cifarflow preprocess`; the manifest and the shards disagree",
        )
    if n == 0:
        return np.empty((0, *shape), dtype=np.uint8)
    flat = np.frombuffer(data_buf, dtype=np.uint8, count=n * size, offset=int(offsets[0]))
    return flat.reshape(n, *shape)


def batches(
    source: DataSource,
    split: str,
    batch_size: int,
    *,
    training: bool,
    shard: tuple[int, int] = (0, 1),
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    readers: int = 2,
    cycle: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` batches of a split.

    Training: this shard's files (``shard = (index, count)``; every ``count``-th image of all files when there
    are fewer files than shards), in a new random order each pass, endlessly, through a shuffle buffer of
    ``shuffle_buffer`` images with tf.data's semantics (each image is drawn uniformly from the buffer and
    replaced by the next one read), full batches only. Evaluation: every file once, in order, the last batch
    may be short. ``readers`` files are read and checksummed ahead in threads, overlapping bucket latency.
    """
    index, count = shard
    entries = source.files(split)
    by_file = not training or len(entries) >= count
    if training and by_file:
        entries = entries[index::count]
    rng = np.random.default_rng([seed, index])
    images = _images_stream(source, entries, rng if training else None, readers, cycle)
    if training and not by_file:
        images = ((x[index::count], y[index::count]) for x, y in images)
    if not training:
        yield from _rebatch(images, batch_size)
        return
    # The stream repeats: a buffer larger than this worker's images would hold copies of the same images.
    rows = sum(e.rows for e in entries) // (1 if by_file else count)
    if rows < batch_size:
        raise InputError(
            f"this worker's share of the {split} split has {rows} images, less than a batch of {batch_size}",
            "lower --batch-size or use fewer workers",
        )
    yield from _shuffled(images, batch_size, min(max(shuffle_buffer, batch_size), rows), rng)


def _images_stream(
    source: DataSource, entries: list[mf.FileEntry], rng: np.random.Generator | None, readers: int, cycle: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row-group chunks of ``entries``; with ``rng``, endlessly, in a fresh file order each pass.

    ``cycle`` files are open at once and their row groups taken in turn (tf.data's ``interleave``), so even a
    shuffle buffer smaller than a file mixes images from several files; ``readers`` more are read ahead.
    """
    if not entries:
        raise InputError(
            f"no files to read in dataset {source.manifest.dataset_id}",
            "use fewer workers than the split has images, or re-run `cifarflow preprocess`",
        )

    def order() -> Iterator[mf.FileEntry]:
        while True:
            yield from (entries[i] for i in rng.permutation(len(entries))) if rng is not None else entries
            if rng is None:
                return

    files = order()
    ahead: deque[tuple[mf.FileEntry, Future[bytes]]] = deque()

    def next_file() -> Iterator[tuple[np.ndarray, np.ndarray]] | None:
        while len(ahead) <= readers and (entry := next(files, None)) is not None:
            ahead.append((entry, _read_ahead(source, entry)))
        if not ahead:
            return None
        entry, data = ahead.popleft()
        return _decode_shard(source, data.result(), entry_url(source, entry))

    open_files = [f for f in (next_file() for _ in range(cycle if rng is not None else 1)) if f is not None]
    while open_files:
        for shard in list(open_files):
            chunk = next(shard, None)
            if chunk is not None:
                yield chunk
                continue
            open_files.remove(shard)
            if (replacement := next_file()) is not None:
                open_files.append(replacement)


def _read_ahead(source: DataSource, entry: mf.FileEntry) -> Future[bytes]:
    """Read and checksum a file in a daemon thread (the work releases the GIL). Daemon, not a thread pool: the
    stream is endless and abandoned mid-read when training ends, and a pool's threads would hold up exit."""
    future: Future[bytes] = Future()

    def work() -> None:
        try:
            future.set_result(mf.read_checked(source.store, source.base, entry))
        except BaseException as exc:  # handed to the reader, which raises it
            future.set_exception(exc)

    threading.Thread(target=work, name="cifarflow-read", daemon=True).start()
    return future


def entry_url(source: DataSource, entry: mf.FileEntry) -> str:
    return redact(join(source.base, entry.path))


def _shuffled(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, buffer: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A shuffle buffer, a batch at a time: take ``batch_size`` random slots, refill them from the stream."""
    pool_x, pool_y, pending = _fill(chunks, buffer)
    size = len(pool_y)
    while True:
        slots = rng.choice(size, batch_size, replace=False)
        yield pool_x[slots], pool_y[slots]  # fancy indexing copies: the pool can be refilled at once
        fresh_x, fresh_y = _take(chunks, pending, batch_size)
        pool_x[slots], pool_y[slots] = fresh_x, fresh_y


def _fill(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], buffer: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    parts_x, parts_y, have = [], [], 0
    for x, y in chunks:
        parts_x.append(x)
        parts_y.append(y)
        have += len(y)
        if have >= buffer:
            break
    pool_x, pool_y = np.concatenate(parts_x), np.concatenate(parts_y)
    rest = [(pool_x[buffer:], pool_y[buffer:])] if len(pool_y) > buffer else []
    return pool_x[:buffer].copy(), pool_y[:buffer].copy(), rest


def _take(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], pending: list[tuple[np.ndarray, np.ndarray]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The next ``n`` images of the (endless) stream; ``pending`` holds what is left of the current chunk."""
    got_x, got_y, have = [], [], 0
    while have < n:
        if not pending:
            pending.append(next(chunks))
        x, y = pending.pop(0)
        need = n - have
        got_x.append(x[:need])
        got_y.append(y[:need])
        have += len(y[:need])
        if len(y) > need:
            pending.insert(0, (x[need:], y[need:]))
    if len(got_x) == 1:
        return got_x[0], got_y[0]
    return np.concatenate(got_x), np.concatenate(got_y)


def _rebatch(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    have = 0
    for x, y in chunks:
        pending.append((x, y))
        have += len(y)
        while have >= batch_size:
            bx, by = _take(iter(()), pending, batch_size)
            have -= batch_size
            yield bx, by
    if have:
        yield np.concatenate([x for x, _ in pending]), np.concatenate([y for _, y in pending])
