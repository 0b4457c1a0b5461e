"""The Spark preprocessing job: planning and split logic, then end-to-end runs on file://, S3 and GCS.

One local[2] SparkSession serves the whole module (``preprocess`` reuses an active session), so only the first
test pays for the JVM.
"""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from cifarflow.cli import main as cli_main
from cifarflow.data import content_index, jvm_archive, spark_daemon, spark_signals
from cifarflow.data import manifest as mf
from cifarflow.data import preprocess as pre
from cifarflow.data import spark as sparkmod
from cifarflow.data.cifar import IMAGE_BYTES, LAYOUTS, hwc_to_chw, row_ids
from cifarflow.data.preprocess import job as preprocess_job
from cifarflow.data.preprocess import ranges, tasks
from cifarflow.errors import ConflictError, InputError, JobError, marked
from cifarflow.storage import Store

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# -- test data: CIFAR archives from arrays -------------------------------------------------------------------


def images_for(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random HWC images whose channel means depend on the class (so mean/std are not trivial)."""
    base = rng.integers(0, 256, size=(len(labels), IMAGE_BYTES), dtype=np.uint8)
    shift = (labels.astype(np.int64)[:, None] * 7) % 50
    return ((base.astype(np.int64) // 2 + shift) % 256).astype(np.uint8)


@dataclass
class Archive:
    """Images by member, HWC, as the test wrote them (the reference for what the dataset must hold)."""

    path: Path
    members: dict[str, tuple[np.ndarray, np.ndarray]]  # member -> (images HWC, labels)
    split_of: dict[str, str]

    def rows(self) -> Iterator[tuple[str, str, int, bytes]]:
        for member, (images, labels) in self.members.items():
            for i in range(len(labels)):
                yield f"{member}:{i:07d}", self.split_of[member], int(labels[i]), images[i].tobytes()


def python_batch(images: np.ndarray, labels: np.ndarray, *, extra: Any = None) -> bytes:
    obj: dict[bytes, Any] = {
        b"batch_label": b"batch",
        b"labels": [int(x) for x in labels],
        b"data": hwc_to_chw(images) if images.ndim == 2 and images.shape[1] == IMAGE_BYTES else images,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if extra is not None:
        obj[b"extra"] = extra
    return pickle.dumps(obj, protocol=2)


def write_archive(
    path: Path,
    train: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    fmt: str = "python",
    override: dict[str, bytes] | None = None,
) -> Archive:
    """A CIFAR-10 tarball (python pickles or binary records) holding exactly these images."""
    layout = LAYOUTS[f"cifar10-{fmt}"]
    files: dict[str, bytes] = {}
    members: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_of: dict[str, str] = {}
    named = [(f"data_batch_{i + 1}", b, "train") for i, b in enumerate(train)] + [
        ("test_batch", test, "test")
    ]
    for name, (images, labels), split in named:
        fname = name + (".bin" if fmt == "binary" else "")
        if fmt == "python":
            files[fname] = python_batch(images, labels)
        else:
            recs = np.concatenate([labels.astype(np.uint8)[:, None], hwc_to_chw(images)], axis=1)
            files[fname] = recs.tobytes()
        members[fname], split_of[fname] = (images, labels), split
    if fmt == "python":
        files[layout.meta] = pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}, protocol=2)
    else:
        files[layout.meta] = ("\n".join(CLASSES) + "\n").encode()
    files.update(override or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{layout.root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Archive(path, members, split_of)


def balanced(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.int32)


def planted_archive(path: Path, fmt: str = "python", seed: int = 0) -> tuple[Archive, dict[str, int]]:
    """Three train batches and a test batch with duplicates planted: within train, train∩test, within test."""
    rng = np.random.default_rng(seed)
    train = []
    for _ in range(3):
        labels = balanced(200, rng)
        train.append((images_for(labels, rng), labels))
    t_labels = balanced(150, rng)
    test = (images_for(t_labels, rng), t_labels)
    # Within train: batch 2 rows 0..4 repeat batch 1 rows 10..14; batch 3 row 7 repeats batch 3 row 3 (twice).
    for i in range(5):
        train[1][0][i] = train[0][0][10 + i]
        train[1][1][i] = train[0][1][10 + i]
    for j in (7, 8):
        train[2][0][j] = train[2][0][3]
        train[2][1][j] = train[2][1][3]
    # Leakage: train batch 1 rows 50..55 are test images 20..25 (label kept).
    for i in range(6):
        train[0][0][50 + i] = test[0][20 + i]
        train[0][1][50 + i] = test[1][20 + i]
    # Within test: rows 100, 101 repeat row 99.
    for j in (100, 101):
        test[0][j] = test[0][99]
        test[1][j] = test[1][99]
    archive = write_archive(path, train, test, fmt)
    return archive, {"train_duplicates": 7, "train_in_test": 6, "test_duplicates": 2}


def content_hash(img: bytes) -> bytes:
    """XXH3-128 of an image's pixels as CIFAR stores them (the CHW planes), from its HWC bytes."""
    return xxhash.xxh3_128_digest(hwc_to_chw(np.frombuffer(img, np.uint8).reshape(1, -1)).tobytes())


def reference(archive: Archive, val_fraction: float, seed: int) -> dict[str, dict[str, tuple[int, bytes]]]:
    """What the dataset must hold, computed in plain Python from the images the test wrote."""
    rows = sorted(archive.rows())
    test_hashes = {content_hash(img) for _, s, _, img in rows if s == "test"}
    seen: set[bytes] = set()
    kept: list[tuple[str, int, bytes, bytes]] = []
    out: dict[str, dict[str, tuple[int, bytes]]] = {"train": {}, "val": {}, "test": {}}
    for row_id, split, label, img in rows:
        digest = content_hash(img)
        if split == "test":
            out["test"][row_id] = (label, img)
        elif digest not in test_hashes and digest not in seen:
            seen.add(digest)
            kept.append((row_id, label, img, digest))
    for c in range(10):
        members = [k for k in kept if k[1] == c]
        hashes = np.frombuffer(b"".join(k[3] for k in members), dtype=np.uint8).reshape(-1, 16)
        keys: Any = pre.split_keys(hashes, seed) if members else []
        order = sorted(zip(keys, (k[0] for k in members), range(len(members)), strict=True))
        n_val = math.floor(len(members) * val_fraction + 0.5)
        val_rows = {members[i][0] for _, _, i in order[:n_val]}
        for row_id, label, img, _ in members:
            out["val" if row_id in val_rows else "train"][row_id] = (label, img)
    return out


def read_split(store: Store, dataset: str, split: str) -> dict[str, tuple[int, bytes]]:
    manifest, base = mf.load(store, dataset)
    rows: dict[str, tuple[int, bytes]] = {}
    for entry in manifest.files(split):
        table = pq.read_table(io.BytesIO(mf.read_checked(store, base, entry)))
        assert table.schema.equals(mf.SCHEMA)
        for row_id, label, image in zip(
            *(table.column(c).to_pylist() for c in ("id", "label", "image")), strict=True
        ):
            assert row_id not in rows
            rows[row_id] = (label, image)
    return rows


def ingest(archive: Path, dest: str, store: Store) -> str:
    from cifarflow.data.ingest import ingest as do_ingest

    return do_ingest(str(archive), dest, store=store).raw_url


# -- planning (no Spark) -------------------------------------------------------------------------------------


def members(fmt: str, sizes: list[int], split: str = "train") -> list[pre.InputFile]:
    return [pre.InputFile(f"m{i}", f"file:///x/m{i}", split, size, f"sha{i}") for i, size in enumerate(sizes)]


def test_python_batches_are_one_split_each() -> None:
    splits = pre.plan_ranges(members("python", [100, 200, 300]), LAYOUTS["cifar10-python"], partitions=64)
    assert [(s.index, s.member, s.offset, s.length, s.first_index) for s in splits] == [
        (0, "m0", 0, 100, 0),
        (1, "m1", 0, 200, 0),
        (2, "m2", 0, 300, 0),
    ]


@pytest.mark.parametrize("partitions", [None, 1, 5, 16, 10_000])
def test_binary_files_split_into_record_aligned_ranges(partitions: int | None, monkeypatch: Any) -> None:
    layout = LAYOUTS["cifar100-binary"]  # 3074-byte records: alignment matters
    size = layout.record_bytes
    monkeypatch.setattr(ranges, "RANGE_BYTES", 40 * size)
    files = members("binary", [100 * size, 37 * size, 3 * size])
    splits = pre.plan_ranges(files, layout, partitions)
    assert [s.index for s in splits] == list(range(len(splits)))
    for m in files:
        own = [s for s in splits if s.member == m.name]
        assert own[0].offset == 0 and sum(s.length for s in own) == m.bytes
        for a, b in itertools.pairwise(own):
            assert b.offset == a.offset + a.length
        assert all(s.offset % size == 0 and s.length % size == 0 and s.length > 0 for s in own)
        assert all(s.first_index == s.offset // size for s in own)
        assert all((s.sha256 is None) == (len(own) > 1) for s in own)
    if partitions is None:  # by bytes: 100 records -> 3 ranges of <= 40, 37 -> 1, 3 -> 1
        assert len(splits) == 5
    elif partitions == 10_000:  # never more than one range per record
        assert len(splits) == 140
    else:
        assert abs(len(splits) - partitions) <= len(files)


def test_a_partial_binary_record_is_refused_before_spark_starts() -> None:
    layout = LAYOUTS["cifar10-binary"]
    with pytest.raises(InputError, match="not a whole number of 3073-byte records"):
        pre.plan_ranges(members("binary", [3073 * 4 + 10]), layout)
    with pytest.raises(InputError, match="holds no images"):
        pre.plan_ranges(members("binary", [0]), layout)


def test_val_count_rounds_half_up() -> None:
    assert [pre.val_count(n, 0.1) for n in (0, 4, 5, 14, 15, 45, 5000)] == [0, 0, 1, 1, 2, 5, 500]
    assert pre.val_count(7, 0.0) == 0


def test_split_keys_depend_on_content_and_seed_only() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, IMAGE_BYTES), dtype=np.uint8)
    hashes = pre.content_hashes(images)
    assert hashes.shape == (50, 16)
    want = [xxhash.xxh3_128_digest(row.tobytes()) for row in images]
    assert [bytes(h) for h in hashes] == want
    # Any layout gives the same digests: strided views (binary records minus their label byte, every other
    # row), a list of arrays (image folders), no rows.
    records = np.concatenate([np.zeros((50, 1), dtype=np.uint8), images], axis=1)
    assert [bytes(h) for h in pre.content_hashes(records[:, 1:])] == want
    assert [bytes(h) for h in pre.content_hashes(images[::2])] == want[::2]
    assert [bytes(h) for h in pre.content_hashes(np.broadcast_to(images[3], (1, IMAGE_BYTES)))] == want[3:4]
    assert [bytes(h) for h in pre.content_hashes(images[:, ::-1].copy()[:, ::-1])] == want
    assert [bytes(h) for h in pre.content_hashes(list(images.reshape(50, 32, 32, 3)))] == want
    assert pre.content_hashes(images[:0]).shape == (0, 16)
    keys = pre.split_keys(hashes, 0)
    assert keys.dtype == np.int64 and len(set(keys.tolist())) == 50
    assert np.array_equal(keys[::-1], pre.split_keys(hashes[::-1], 0))  # per image, not per position
    assert not np.array_equal(keys, pre.split_keys(hashes, 1))
    # Uniform enough for a stratified cut: about half the keys are negative.
    many = pre.split_keys(pre.content_hashes(rng.integers(0, 256, (2000, IMAGE_BYTES), dtype=np.uint8)), 5)
    assert 900 < int((many < 0).sum()) < 1100


def test_channel_moments_and_mean_std_match_numpy() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3000, IMAGE_BYTES), dtype=np.uint8)
    sums, squares = pre.channel_moments(images, rows=700)
    pixels = images.reshape(-1, 3).astype(np.int64)
    assert sums == pixels.sum(0).tolist()
    assert squares == (pixels * pixels).sum(0).tolist()
    mean, std = pre.mean_std(sums, squares, len(pixels))
    as01 = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, as01.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, as01.std(0), rtol=1e-10)  # numpy rounds more; ours is exact


def test_cutoffs_compare_key_then_id() -> None:
    cut = pre.Cutoffs(keys={0: 5, 1: -3}, ids={0: "b:0000002", 1: "a:0000000"})
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    keys = np.array([4, 5, 5, 6, -3, -2, -100])
    ids = np.array(
        ["z:0000009", "b:0000001", "b:0000003", "a:0000000", "a:0000000", "a:0000001", "x:0000000"]
    )
    assert cut.val_mask(labels, keys, ids, 10).tolist() == [True, True, False, False, True, False, False]
    assert cut.val_mask(labels, keys, pa.array(ids.tolist()), 10).tolist() == [
        True, True, False, False, True, False, False
    ]  # fmt: skip


def test_the_package_names_load_on_first_use() -> None:
    """The lazy ``preprocess`` package exports what ``__all__`` lists, each from its module."""
    from cifarflow.data.preprocess import _EXPORTS

    assert set(_EXPORTS) == set(pre.__all__)
    assert all(getattr(pre, name) is not None for name in pre.__all__)
    with pytest.raises(AttributeError):
        pre.not_a_name  # noqa: B018


def test_planes_become_interleaved_pixels_for_all_rows_or_some() -> None:
    """``chw_to_hwc`` is numpy's transpose, whole or of the rows at ``take`` (any order, repeats, across the
    blocks it works in), and ``hwc_to_chw`` undoes it."""
    from cifarflow.data.cifar import chw_to_hwc

    rng = np.random.default_rng(3)
    planes = rng.integers(0, 256, size=(700, IMAGE_BYTES), dtype=np.uint8)
    want = planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(-1, IMAGE_BYTES)
    assert np.array_equal(chw_to_hwc(planes), want)
    assert np.array_equal(hwc_to_chw(chw_to_hwc(planes)), planes)
    for take in (
        rng.permutation(700)[:613],
        np.array([5, 5, 699, 0]),
        np.arange(0),
        np.flatnonzero(rng.random(700) < 0.9),
    ):
        assert np.array_equal(chw_to_hwc(planes, take), want[take])


def test_row_ids_are_member_and_zero_padded_record() -> None:
    positions = np.array([0, 7, 12345, 9_999_999])
    assert row_ids("data_batch_1", positions).to_pylist() == [f"data_batch_1:{p:07d}" for p in positions]
    # Past seven digits the record number simply grows (the same as the f-string).
    assert row_ids("tëst", np.array([3, 10_000_000])).to_pylist() == ["tëst:0000003", "tëst:10000000"]
    assert row_ids("m", np.arange(0)).to_pylist() == []


def test_task_errors_come_back_as_the_original_one_liner() -> None:
    wrapped = RuntimeError(
        "An error occurred while calling o99.collectToPython.\n"
        ": org.apache.spark.SparkException: Job aborted\n"
        "pyspark.errors.exceptions.base.PythonException: RuntimeError: "
        + marked(InputError("data_batch_2: label 12 is out of range", "check --classes"))
        + "\n\tat org.apache.spark..."
    )
    err = pre._user_error(wrapped)
    assert isinstance(err, InputError)
    assert str(err) == "data_batch_2: label 12 is out of range (fix: check --classes)"
    other = pre._user_error(RuntimeError("Py4JError\norg.apache.spark.SparkException: Job aborted: boom"))
    assert isinstance(other, JobError) and "Job aborted: boom" in str(other)


def test_image_column_is_zero_copy_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, IMAGE_BYTES), dtype=np.uint8)
    table = pre.shard_table(row_ids("m", np.arange(7)), np.arange(7, dtype=np.int32), images)
    assert table.schema.equals(mf.SCHEMA)
    assert table.column("image").to_pylist()[4] == images[4].tobytes()
    # Same rows => same bytes: what makes a retried task's shard identical to the first attempt's.
    assert mf.table_bytes(table) == mf.table_bytes(pa.Table.from_pylist(table.to_pylist(), schema=mf.SCHEMA))


def test_a_shard_is_hashed_as_it_is_written(tmp_path: Path) -> None:
    """``write_shard`` streams the writer's output to the file and hashes it on the way: the file, its size and
    sha256 are those of the shard's bytes, and a writer that fails leaves no file behind."""
    rng = np.random.default_rng(4)
    table = pre.shard_table(
        row_ids("m", np.arange(3000)),
        np.arange(3000, dtype=np.int32) % 10,
        rng.integers(0, 256, (3000, 99), np.uint8),
    )
    entry = mf.write_shard(Store(), str(tmp_path), "train/part-00000-000.parquet", table)
    data = (tmp_path / "train" / "part-00000-000.parquet").read_bytes()
    assert data == mf.table_bytes(table)
    assert (entry.rows, entry.bytes, entry.sha256) == (3000, len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(ValueError, match="field names"):  # raised inside the write, its file already open
        mf.write_shard(Store(), str(tmp_path), "train/part-00001-000.parquet", table.drop_columns(["image"]))
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["part-00000-000.parquet"]


# -- the split plan in Spark, on hand-made rows --------------------------------------------------------------


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    os.environ["CIFARFLOW_SPARK_UI"] = "0"
    context = sparkmod.build("local[2]", "cifarflow-tests")
    yield sparkmod.Spark(context).sql
    sparkmod.stop(context)


def test_workers_load_the_installed_pyspark_not_sparks_zip(spark: Any) -> None:
    def origin(_: int) -> str:
        import pyspark

        return str(pyspark.__file__)

    files = spark.sparkContext.parallelize([0, 1], 2).map(origin).collect()
    # The driver's own (installed) pyspark, not .../python/lib/pyspark.zip/pyspark/__init__.py.
    assert files == [origin(0)] * 2


def test_the_daemon_drops_only_the_wheels_own_zips(tmp_path: Path) -> None:
    site = tmp_path / "site"
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    wheel = [str(lib / "pyspark.zip"), str(lib / "py4j-0.10.9.9-src.zip")]
    other = str(tmp_path / "spark-dist" / "python" / "lib" / "pyspark.zip")
    assert spark_daemon.wheel_zips([*wheel, other, str(site)]) == wheel
    # No pyspark outside a zip (a Spark distribution's layout): the daemon changes nothing.
    assert spark_daemon.wheel_zips([*wheel, other]) == []


def test_dedup_leakage_and_stratified_cut_in_spark(spark: Any) -> None:
    def h(n: int) -> bytes:
        return n.to_bytes(16, "big")

    rows = [
        # id, src, label, hash, key
        ("a:0000000", "train", 0, h(1), 10),
        ("b:0000000", "train", 0, h(1), 10),  # dup of a:0 (dropped; a:0 is the lowest id)
        ("a:0000001", "train", 0, h(2), -5),  # also in test: leak
        ("t:0000000", "test", 0, h(2), -5),
        ("t:0000001", "test", 1, h(3), 1),
        ("t:0000002", "test", 1, h(3), 1),  # test duplicate: counted, kept
    ]
    rows += [(f"c:{i:07d}", "train", 0, h(100 + i), k) for i, k in enumerate([3, 1, 2, 7, 5, 9, 8, 6, 4])]
    rows += [(f"d:{i:07d}", "train", 1, h(200 + i), 0) for i in range(15)]  # equal keys: ids break ties
    df = spark.createDataFrame(rows, schema=pre.spark_schema(pre.SCAN_ARROW))
    plan = pre.plan_split(df, 0.2, len(rows), 10)
    assert plan.duplicates == {"train_duplicates": 1, "train_in_test": 1, "test_duplicates": 1}
    assert plan.train_kept == {0: 10, 1: 15} and plan.test == {0: 1, 1: 2}
    assert {m: v.tolist() for m, v in plan.dropped.items()} == {"a": [1], "b": [0]}
    # class 0: 10 kept -> 2 val: keys 1 (c:1) and 2 (c:2); class 1: 15 -> 3 val: d:0..d:2 by id.
    assert plan.cutoffs.keys == {0: 2, 1: 0} and plan.cutoffs.ids == {0: "c:0000002", 1: "d:0000002"}
    assert plan.expected(0.2, 10)["val"][:2] == [2, 3]
    no_val = pre.plan_split(df, 0.0, len(rows), 10)
    assert no_val.cutoffs.keys == {} and no_val.expected(0.0, 10)["val"] == [0] * 10


def reference_plan(rows: list[tuple[Any, ...]], val_fraction: float, carve_fraction: float | None) -> Any:
    """The rules of pass 1 written plainly: every row in memory, every class sorted."""
    groups: dict[bytes, list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(row[3], []).append(row)
    dropped, reasons = set(), {"train_duplicates": 0, "train_in_test": 0, "test_duplicates": 0}
    for group in groups.values():
        train = sorted(r[0] for r in group if r[1] == "train")
        test = [r for r in group if r[1] == "test"]
        gone = train if test else train[1:]
        dropped |= set(gone)
        reasons["train_in_test" if test else "train_duplicates"] += len(gone)
        reasons["test_duplicates"] += max(0, len(test) - 1)
    kept = [r for r in rows if r[1] == "train" and r[0] not in dropped]

    def cut(pool: list[tuple[Any, ...]], column: int, fraction: float) -> tuple[dict[int, Any], set[str]]:
        cuts, chosen = {}, set()
        for label in {r[2] for r in pool}:
            ordered = sorted((r[column], r[0]) for r in pool if r[2] == label)
            k = pre.val_count(len(ordered), fraction)
            if k:
                cuts[label] = ordered[k - 1]
                chosen |= {i for _, i in ordered[:k]}
        return cuts, chosen

    carve: dict[int, Any] = {}
    if carve_fraction is not None:
        carve, carved = cut(kept, 5, carve_fraction)
        kept = [r for r in kept if r[0] not in carved]
    return reasons, cut(kept, 4, val_fraction)[0], carve, len(kept)


@pytest.mark.parametrize("carve_fraction", [None, 0.25])
def test_the_plan_matches_the_rules_on_random_rows(
    spark: Any, monkeypatch: pytest.MonkeyPatch, carve_fraction: float | None
) -> None:
    """Duplicates, leaks, equal keys, keys at both ends of int64, and buckets of a few rows each (so the
    k-th falls anywhere in a bucket): the histogram plan gives what sorting every class gives."""
    from cifarflow.data.preprocess import plan as planmod

    monkeypatch.setattr(planmod, "BUCKET_ROWS", 4)
    rng = np.random.default_rng(7)
    ends = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0]
    # A key is a function of the content; every 50th content shares one of four keys with others.
    keys = [
        ends[c % 4] if c % 50 == 0 else int(rng.integers(-(2**63), 2**63 - 1)) >> int(rng.integers(0, 62))
        for c in range(520)
    ]
    rows = []
    for i in range(600):
        content = int(rng.integers(0, 520))  # ~80 repeated contents
        key = keys[content]
        src = "test" if rng.random() < 0.2 else "train"
        tkey = int(rng.integers(-5, 5))  # many equal carve keys: ids break the ties
        rows.append((f"m{i % 7}:{i:07d}", src, content % 3, content.to_bytes(16, "big"), key, tkey))
    schema = pre.spark_schema(pa.schema([*pre.SCAN_ARROW, pa.field("tkey", pa.int64(), nullable=False)]))
    plan = pre.plan_split(spark.createDataFrame(rows, schema=schema), 0.3, len(rows), 3, carve_fraction)
    reasons, val, carve, kept = reference_plan(rows, 0.3, carve_fraction)
    assert plan.duplicates == reasons and sum(plan.train_kept.values()) == kept
    assert {c: (plan.cutoffs.keys[c], plan.cutoffs.ids[c]) for c in plan.cutoffs.keys} == val
    got_carve = plan.carve or pre.Cutoffs({}, {})
    assert {c: (got_carve.keys[c], got_carve.ids[c]) for c in got_carve.keys} == carve


@pytest.mark.parametrize("seed", [0, 11])
def test_content_indexes_give_the_plan_the_rules_give(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Pass 1 over content indexes (counts, packed keys and bucket rows computed in the tasks), on random
    records with duplicates within and across members, leaks and test duplicates, two ranges a member and
    buckets of a few rows: what sorting every class gives, and what Spark SQL over the same rows gives."""
    from cifarflow.data.preprocess import plan as planmod
    from cifarflow.data.preprocess.indexes import IndexScan

    monkeypatch.setattr(planmod, "BUCKET_ROWS", 4)
    rng = np.random.default_rng(seed)
    contents = rng.integers(0, 256, size=(400, content_index.HASH_BYTES), dtype=np.uint8)
    parts, rows = [], []
    for member, split in [("data_batch_1", "train"), ("data_batch_2", "train"), ("test_batch", "test")]:
        picks = rng.integers(0, len(contents), size=160)
        labels, hashes = (picks % 3).astype(np.uint8), contents[picks]
        path = tmp_path / member
        path.write_bytes(np.concatenate([labels[:, None], hashes], axis=1).tobytes())
        for first in (0, 80):
            parts.append(
                pre.InputRange(
                    len(parts), member, "unused", split, 0, 0, first, rows=80, hashes_url=str(path)
                )
            )
        keys = pre.split_keys(hashes, seed).tolist()
        ids = row_ids(member, np.arange(len(picks))).to_pylist()
        rows += [(ids[i], split, int(labels[i]), hashes[i].tobytes(), keys[i]) for i in range(len(picks))]
    ctx = tasks.TaskContext(tuple(parts), seed, Store(), 3, "cifar10-binary")

    plan = pre.plan_split(IndexScan(spark.sparkContext, ctx), 0.3, len(rows), 3)
    in_sql = pre.plan_split(spark.createDataFrame(rows, pre.spark_schema(pre.SCAN_ARROW)), 0.3, len(rows), 3)
    reasons, val, _, kept = reference_plan(rows, 0.3, None)
    assert min(reasons.values()) > 0  # every kind of duplicate occurs
    assert plan.duplicates == in_sql.duplicates == reasons
    assert plan.train_kept == in_sql.train_kept and sum(plan.train_kept.values()) == kept
    assert plan.test == in_sql.test
    assert {c: (plan.cutoffs.keys[c], plan.cutoffs.ids[c]) for c in plan.cutoffs.keys} == val
    assert plan.cutoffs == in_sql.cutoffs
    assert {m: v.tolist() for m, v in plan.dropped.items()} == {
        m: v.tolist() for m, v in in_sql.dropped.items()
    }


def test_tasks_start_with_the_largest_range(spark: Any) -> None:
    """Spark starts partitions in order: a big pickle first runs beside the small ones, not alone at the end."""
    files = [*members("python", [10, 50, 10]), *members("python", [80], split="test")]
    parts = pre.plan_ranges(files, LAYOUTS["cifar10-python"])
    order = preprocess_job.largest_first(parts)
    assert order == [3, 1, 0, 2]  # by size; ties in input order
    numbers = preprocess_job.range_frame(spark, order)
    assert numbers.rdd.getNumPartitions() == 4
    assert [row.id for row in numbers.collect()] == order
    assert spark.sparkContext.parallelize(order, len(order)).glom().collect() == [[3], [1], [0], [2]]
    # Pass 2 pairs ranges only when every core still gets at least four tasks; a pair never splits the order.
    assert [preprocess_job.write_partitions(n, 2) for n in (1, 4, 8, 9, 16, 55)] == [1, 4, 8, 8, 8, 28]
    paired = spark.sparkContext.parallelize(list(range(55)), 28).glom().collect()
    assert list(itertools.chain(*paired)) == list(range(55)) and max(map(len, paired)) == 2


def test_a_worker_heap_is_frozen_after_its_first_task() -> None:
    """PySpark's daemon collects garbage after every task: what the first task left alive is frozen once."""
    gc.unfreeze()
    tasks.freeze_worker_heap.cache_clear()
    try:
        task = tasks.guarded(lambda ctx, part: iter([pa.record_batch([pa.array([part])], names=["n"])]))
        ranges_in = iter([pa.record_batch([pa.array([0, 1])], names=["id"])])
        out = list(task(ranges_in, ctx=SimpleNamespace(ranges=["a", "b"])))
        assert [b.column(0).to_pylist() for b in out] == [["a"], ["b"]]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


# -- end to end on file:// -----------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: Any) -> tuple[int, list[str], list[str]]:
    """``cifarflow ARGS`` in this process (reusing the module's session): exit code, stdout, stderr lines."""
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
    finally:
        # The CLI points cifarflow's log handler at this test's captured stderr; hand logging back to pytest.
        logging.getLogger("cifarflow").handlers.clear()
        logging.getLogger("cifarflow").propagate = True
    captured = capsys.readouterr()
    code = exit_info.value.code
    return int(code) if isinstance(code, int) else 1, captured.out.splitlines(), captured.err.splitlines()


def assert_one_error_line(code: int, err: list[str], *needles: str) -> str:
    assert code == 2, err
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line or "\tat org.apache" in line for line in err), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def no_dataset_left(out: Path) -> None:
    assert not list(out.glob("**/*.parquet")) and not list(out.glob("**/_manifest.json"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, dict[str, int], str]:
    """The planted-duplicates archive, ingested once for the module."""
    root = tmp_path_factory.mktemp("planted")
    archive, dups = planted_archive(root / "cifar-10-python.tar.gz")
    return archive, dups, ingest(archive.path, str(root / "work"), Store())


def test_end_to_end_dedup_split_and_stats(spark: Any, planted: Any, tmp_path: Path, capsys: Any) -> None:
    archive, dups, raw = planted
    store = Store()
    result = pre.preprocess(raw, str(tmp_path / "ds"), val_fraction=0.1, seed=7, store=store)
    assert not result.reused and result.duplicates == dups
    want = reference(archive, 0.1, 7)
    assert result.counts == {split: len(rows) for split, rows in want.items()}
    for split in ("train", "val", "test"):
        assert read_split(store, result.dataset_url, split) == want[split], split
    manifest, base = mf.load(store, result.dataset_url)
    mf.verify(store, manifest, base)
    stats = mf.load_stats(store, manifest, base)
    # Per class: exactly round(n * 0.1) of the kept train images went to val.
    for c in range(10):
        kept = sum(1 for label, _ in [*want["train"].values(), *want["val"].values()] if label == c)
        assert stats.counts["val"][c] == pre.val_count(kept, 0.1)
    pixels = (
        np.frombuffer(b"".join(img for _, img in want["train"].values()), np.uint8).reshape(-1, 3) / 255.0
    )
    np.testing.assert_allclose(stats.mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, pixels.std(0), rtol=1e-10)
    assert manifest.class_names == CLASSES and manifest.parameters["seed"] == 7
    assert manifest.source["archive_sha256"] == hashlib.sha256(archive.path.read_bytes()).hexdigest()

    # The same command again is a no-op that starts no Spark job and changes no byte.
    before = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    code, out, _ = run_cli(
        ["preprocess", "--raw", raw, "--out", str(tmp_path / "ds"), "--seed", "7", "--val-fraction", "0.1"],
        capsys,
    )
    assert code == 0 and out == [f"dataset: {result.dataset_id}", f"manifest: {result.manifest_url}"]
    assert {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()} == before
    again = pre.preprocess(raw, str(tmp_path / "ds"), val_fraction=0.1, seed=7, store=store)
    assert again.reused and again.dataset_id == result.dataset_id and again.duplicates == dups


def test_partitions_change_neither_id_nor_content(spark: Any, tmp_path: Path) -> None:
    archive, dups = planted_archive(tmp_path / "cifar-10-binary.tar.gz", fmt="binary", seed=3)
    store = Store()
    raw = ingest(archive.path, str(tmp_path / "work"), store)
    one = pre.preprocess(raw, str(tmp_path / "a"), partitions=1, store=store)
    many = pre.preprocess(raw, str(tmp_path / "b"), partitions=9, store=store)
    assert one.dataset_id == many.dataset_id and one.duplicates == many.duplicates == dups
    m_one, _ = mf.load(store, one.dataset_url)
    m_many, _ = mf.load(store, many.dataset_url)
    assert len(m_many.files("train")) > len(m_one.files("train"))  # really split differently
    want = reference(archive, 0.1, 0)
    for split in ("train", "val", "test"):
        assert (
            read_split(store, one.dataset_url, split)
            == read_split(store, many.dataset_url, split)
            == want[split]
        )
    stats = "stats.json"
    assert (tmp_path / "a" / one.dataset_id / stats).read_bytes() == (
        tmp_path / "b" / many.dataset_id / stats
    ).read_bytes()


def without_content_index(raw: str) -> None:
    """Make ``raw`` what an ingest before content indexes landed: no index files, none in the marker."""
    raw_dir = Path(raw.removeprefix("file://"))
    marker = json.loads((raw_dir / "_ingest.json").read_text())
    for member in marker["members"]:
        member.pop("hashes", None)
    shutil.rmtree(raw_dir / marker["folder"] / content_index.FOLDER)
    (raw_dir / "_ingest.json").write_text(json.dumps(marker))


def scan_rows(store: Store, raw: str, seed: int = 0) -> pa.Table:
    """Pass 1's rows for every range of ``raw``, computed in this process (no Spark)."""
    source = preprocess_job.read_source(store, raw)
    assert isinstance(source, pre.CifarInput)
    parts = preprocess_job.plan_input(store, source, 9)  # binary members in two or three ranges each
    ctx = tasks.TaskContext(tuple(parts), seed, store, source.num_classes, source.layout.name)
    numbers = pa.record_batch([pa.array(range(len(parts)), pa.int64())], names=["id"])
    return pa.Table.from_batches(list(tasks.scan_task(iter([numbers]), ctx=ctx)))


def test_a_pass_two_task_never_loads_pandas(planted: Any, tmp_path: Path) -> None:
    """pyarrow imports pandas on its first ``pa.array`` of a numpy array (~0.35 s in each worker): pass 2's
    tasks build their columns from buffers. Run as a worker runs them, in a fresh process with the task's
    context unpickled there."""
    store = Store()
    source = preprocess_job.read_source(store, planted[2])
    parts = preprocess_job.plan_input(store, source, None)
    ctx = tasks.TaskContext(tuple(parts), 0, store, source.num_classes, source.layout.name)
    first = scan_rows(store, planted[2]).slice(0, 1).to_pylist()[0]  # a cut-off that one row ties
    cutoffs = pre.Cutoffs({first["label"]: first["key"]}, {first["label"]: first["id"]})
    arguments = {"dataset": str(tmp_path / "ds"), "dropped": SimpleNamespace(value={}), "cutoffs": cutoffs}
    (tmp_path / "task.pickle").write_bytes(pickle.dumps((ctx, len(parts), arguments)))
    script = (
        "import pickle, sys\n"
        "from cifarflow.data.preprocess import tasks\n"
        f"ctx, n, arguments = pickle.loads(open({str(tmp_path / 'task.pickle')!r}, 'rb').read())\n"
        "shards = list(tasks.write_task(iter(range(n)), ctx=ctx, **arguments))\n"
        "print(sorted({s.split for s in shards}), 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[0] == "['test', 'train', 'val'] False", done.stdout + done.stderr


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_pass_one_reads_the_content_index_not_the_images(tmp_path: Path, fmt: str) -> None:
    archive, _ = planted_archive(tmp_path / f"cifar-10-{fmt}.tar.gz", fmt=fmt, seed=5)
    store = Store()
    indexed, plain = (ingest(archive.path, str(tmp_path / name), store) for name in ("a", "b"))
    without_content_index(plain)
    want = scan_rows(store, plain, seed=3)
    assert want.num_rows == sum(len(labels) for _, labels in archive.members.values())
    # The images themselves are not needed: pass 1 reads 17 bytes an image.
    folder = (
        Path(indexed.removeprefix("file://"))
        / json.loads(Path(indexed.removeprefix("file://"), "_ingest.json").read_text())["folder"]
    )
    for member in archive.members:
        (folder / member).rename(folder / f"{member}.away")
    assert scan_rows(store, indexed, seed=3).equals(want)


@pytest.mark.parametrize(("fmt", "partitions"), [("python", None), ("binary", 9)])
def test_the_content_index_changes_no_decision(
    spark: Any, tmp_path: Path, fmt: str, partitions: int | None
) -> None:
    """The same dataset, byte for byte, whether pass 1 read ingest's content index or the images (a raw
    folder an older ingest landed)."""
    archive, dups = planted_archive(tmp_path / f"cifar-10-{fmt}.tar.gz", fmt=fmt, seed=5)
    store = Store()
    indexed, plain = (ingest(archive.path, str(tmp_path / name), store) for name in ("a", "b"))
    without_content_index(plain)
    one = pre.preprocess(indexed, str(tmp_path / "ds-a"), partitions=partitions, seed=4, store=store)
    two = pre.preprocess(plain, str(tmp_path / "ds-b"), partitions=partitions, seed=4, store=store)
    assert one.dataset_id == two.dataset_id and one.duplicates == two.duplicates == dups
    (m_one, base_one), (m_two, base_two) = mf.load(store, one.dataset_url), mf.load(store, two.dataset_url)
    assert m_one.splits == m_two.splits  # same shards: names, rows, sizes, checksums
    assert mf.read_checked(store, base_one, m_one.stats) == mf.read_checked(store, base_two, m_two.stats)
    want = reference(archive, 0.1, 4)
    assert {s: read_split(store, one.dataset_url, s) for s in want} == want


def test_outputs_that_hold_another_dataset_are_refused(
    spark: Any, planted: Any, tmp_path: Path, capsys: Any
) -> None:
    _, _, raw = planted
    store = Store()
    out = tmp_path / "ds"
    done = pre.preprocess(raw, str(out), val_fraction=0.2, store=store)
    dataset = Path(done.dataset_url.removeprefix("file://"))

    # --out pointing at a dataset folder instead of the datasets root.
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(dataset)], capsys)
    assert_one_error_line(code, err, "is itself a dataset folder", "fix: pass its parent")

    # OUT/<id>/ holding a manifest of something else.
    other = pre.parameters(pre.read_source(store, raw), 0.3, 0)
    target = out / mf.dataset_id(pre.read_source(store, raw).checksum, other)
    target.mkdir()
    data = json.loads((dataset / mf.MANIFEST).read_text())
    (target / mf.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ConflictError, match="holds a different dataset"):
        pre.preprocess(raw, str(out), val_fraction=0.3, store=store)

    # A committed dataset with one flipped byte in a shard (same size) is not silently reused.
    shard = next(dataset.glob("train/*.parquet"))
    original = shard.read_bytes()
    shard.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(out), "--val-fraction", "0.2"], capsys)
    assert_one_error_line(code, err, "holds a damaged dataset", "does not match its manifest checksum")
    shard.write_bytes(original)

    # --raw naming a dataset instead of ingest's raw folder.
    code, _, err = run_cli(["preprocess", "--raw", str(dataset), "--out", str(out)], capsys)
    assert_one_error_line(
        code, err, "is a dataset that `cifarflow preprocess` wrote", "fix: pass --raw DEST/raw"
    )

    # A committed dataset whose shard went missing is not silently reused.
    next(dataset.glob("val/*.parquet")).unlink()
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(out), "--val-fraction", "0.2"], capsys)
    assert_one_error_line(code, err, "holds a damaged dataset", "missing", "fix: remove")


# -- bad input: one line, exit 2, nothing left ---------------------------------------------------------------


def doctor(raw: str, member: str, data: bytes | None) -> None:
    """Replace (or delete) a member of an ingested raw folder and re-record it in the index, as a foreign or
    older tool might have: the defence inside the Spark tasks must catch what ingest would have refused."""
    raw_dir = Path(raw.removeprefix("file://"))
    index = json.loads((raw_dir / "_ingest.json").read_text())
    entry = next(m for m in index["members"] if m["path"] == member)
    path = raw_dir / index["folder"] / member
    if data is None:
        path.unlink()
        return
    path.write_bytes(data)
    entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (raw_dir / "_ingest.json").write_text(json.dumps(index))


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _bad_members() -> dict[str, tuple[str, bytes | None, tuple[str, ...]]]:
    rng = np.random.default_rng(5)
    labels = balanced(40, rng)
    images = images_for(labels, rng)
    return {
        "unsafe-pickle": (
            "data_batch_2",
            pickle.dumps({b"data": _Evil()}, protocol=2),
            ("unsafe pickle", "system"),
        ),
        "wrong-image-size": ("data_batch_2", python_batch(images[:, :3000], labels), ("shape 40x3000",)),
        "label-out-of-range": ("data_batch_3", python_batch(images, labels + 5), ("out of range 0..9",)),
        "empty-batch": ("test_batch", python_batch(images[:0], labels[:0]), ("holds no images",)),
        "not-a-pickle": ("data_batch_1", b"\x80\x02garbage", ("not a readable CIFAR pickle",)),
        "missing-member": (
            "data_batch_3",
            None,
            ("is missing", "re-run the same `cifarflow ingest --source"),
        ),
        # Valid, as many images, other pixels: only pass 2's check against the content index can tell.
        "other-images": (
            "data_batch_2",
            python_batch(images_for(balanced(60, rng), rng), balanced(60, rng)),
            ("data_batch_2 and its content index disagree", "re-run `cifarflow ingest` into a fresh folder"),
        ),
    }


@pytest.fixture
def fresh_raw(tmp_path: Path) -> str:
    rng = np.random.default_rng(9)
    train = [(images_for(lab, rng), lab) for lab in (balanced(60, rng) for _ in range(3))]
    t_lab = balanced(30, rng)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", train, (images_for(t_lab, rng), t_lab))
    return ingest(archive.path, str(tmp_path / "work"), Store())


@pytest.mark.parametrize("case", sorted(_bad_members()))
def test_bad_raw_members_fail_in_tasks_with_one_line(
    spark: Any, fresh_raw: str, tmp_path: Path, capsys: Any, case: str
) -> None:
    member, data, needles = _bad_members()[case]
    doctor(fresh_raw, member, data)
    code, _, err = run_cli(["preprocess", "--raw", fresh_raw, "--out", str(tmp_path / "ds")], capsys)
    assert_one_error_line(code, err, *needles)
    no_dataset_left(tmp_path / "ds")


def test_the_fix_for_a_missing_raw_file_works(
    spark: Any, fresh_raw: str, tmp_path: Path, capsys: Any
) -> None:
    doctor(fresh_raw, "data_batch_3", None)
    command = ["preprocess", "--raw", fresh_raw, "--out", str(tmp_path / "ds")]
    code, _, err = run_cli(command, capsys)
    assert_one_error_line(code, err, "is missing", "lands missing files again")
    # What the fix says: the same ingest command again.
    ingest(tmp_path / "cifar-10-python.tar.gz", str(tmp_path / "work"), Store())
    code, out, _ = run_cli(command, capsys)
    assert code == 0 and out[0].startswith("dataset: ds-"), out


@pytest.mark.parametrize("damage", ["missing", "cut", "label"])
def test_a_damaged_content_index_is_one_line(
    spark: Any, fresh_raw: str, tmp_path: Path, capsys: Any, damage: str
) -> None:
    raw_dir = Path(fresh_raw.removeprefix("file://"))
    marker = json.loads((raw_dir / "_ingest.json").read_text())
    index = raw_dir / marker["folder"] / content_index.path("data_batch_2")
    if damage == "missing":
        index.unlink()
    elif damage == "cut":
        index.write_bytes(index.read_bytes()[:-1])
    else:  # a label no class has, re-recorded in the marker: only the label check can tell
        records = bytearray(index.read_bytes())
        records[0] = 200
        index.write_bytes(bytes(records))
        entry = next(m for m in marker["members"] if m["path"] == "data_batch_2")
        entry["hashes"] = hashlib.sha256(records).hexdigest()
        (raw_dir / "_ingest.json").write_text(json.dumps(marker))
    code, _, err = run_cli(["preprocess", "--raw", fresh_raw, "--out", str(tmp_path / "ds")], capsys)
    needle = "is missing" if damage == "missing" else "does not match what ingest recorded"
    assert_one_error_line(code, err, content_index.path("data_batch_2"), needle)
    no_dataset_left(tmp_path / "ds")


def test_raw_files_changed_after_ingest_are_refused(
    spark: Any, fresh_raw: str, tmp_path: Path, capsys: Any
) -> None:
    raw_dir = Path(fresh_raw.removeprefix("file://"))
    folder = json.loads((raw_dir / "_ingest.json").read_text())["folder"]
    path = raw_dir / folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = run_cli(["preprocess", "--raw", fresh_raw, "--out", str(tmp_path / "ds")], capsys)
    assert_one_error_line(code, err, "does not match what ingest recorded")
    no_dataset_left(tmp_path / "ds")


def test_truncated_binary_records_are_refused_by_the_planner(tmp_path: Path, capsys: Any) -> None:
    rng = np.random.default_rng(4)
    lab = balanced(20, rng)
    archive = write_archive(
        tmp_path / "b.tar.gz", [(images_for(lab, rng), lab)], (images_for(lab, rng), lab), "binary"
    )
    raw = ingest(archive.path, str(tmp_path / "work"), Store())
    raw_dir = Path(raw.removeprefix("file://"))
    folder = json.loads((raw_dir / "_ingest.json").read_text())["folder"]
    doctor(raw, "test_batch.bin", (raw_dir / folder / "test_batch.bin").read_bytes()[:-7])
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(tmp_path / "ds")], capsys)
    assert_one_error_line(code, err, "test_batch.bin", "not a whole number of 3073-byte records")
    no_dataset_left(tmp_path / "ds")


def test_a_raw_folder_that_was_never_ingested_is_refused(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(
        ["preprocess", "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "ds")], capsys
    )
    assert_one_error_line(code, err, "no ingested archive", "fix: run `cifarflow ingest")


def test_an_unreachable_endpoint_is_one_line(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = run_cli(
        ["preprocess", "--raw", "s3://bucket/raw", "--out", "s3://bucket/ds", "--s3-endpoint", dead], capsys
    )
    assert_one_error_line(code, err, "cannot reach the storage endpoint")


def test_a_bad_master_is_one_line_naming_it(fresh_raw: str, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(
        ["preprocess", "--raw", fresh_raw, "--out", str(tmp_path / "ds"), "--master", "bogus://x"], capsys
    )
    assert_one_error_line(code, err, "--master 'bogus://x' is not a Spark master URL", "fix: pass local[*]")
    assert not (tmp_path / "ds").exists()


def test_an_unwritable_output_is_refused_before_spark_starts(
    fresh_raw: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    def no_spark(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Spark started")

    monkeypatch.setattr(sparkmod, "session", no_spark)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(["preprocess", "--raw", fresh_raw, "--out", str(blocker / "ds")], capsys)
    assert_one_error_line(code, err, "cannot write to --out", "fix: pass an --out folder you can write to")


def test_a_failing_run_removes_only_its_own_attempt(
    spark: Any, fresh_raw: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Another run of the same input is filling its attempt folder and has begun moving shards into OUT/<id>/
    when this one fails after writing all its shards: only this run's own attempt folder goes."""
    store = Store()
    out = tmp_path / "ds"
    source = pre.read_source(store, fresh_raw)
    ds_id = mf.dataset_id(source.checksum, pre.parameters(source, 0.1, 0))
    others = [out / f"_attempt-{ds_id}-other" / "train" / "part-00001-000.parquet", out / ds_id / "val" / "x"]
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"another run's")

    def fail(*args: Any) -> Any:
        assert len(list(out.glob("_attempt-*/*/part-*.parquet"))) > 1  # this run's shards were written
        raise JobError("pass 2 went wrong", "test")

    monkeypatch.setattr(preprocess_job, "assemble", fail)
    with pytest.raises(JobError, match="pass 2 went wrong"):
        pre.preprocess(fresh_raw, str(out), store=store)
    assert all(path.read_bytes() == b"another run's" for path in others)
    assert sorted(p.name for p in out.iterdir()) == sorted([ds_id, f"_attempt-{ds_id}-other"])


def test_the_commit_checks_every_shard_it_lists(
    spark: Any, fresh_raw: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A shard that another run (or tool) removes between the write pass and the commit stops the commit."""
    move = mf.move

    def move_then_lose(store: Store, src: str, dst: str) -> None:
        move(store, src, dst)
        if dst.endswith("part-00001-000.parquet"):
            Path(dst.removeprefix("file://")).unlink()

    monkeypatch.setattr(mf, "move", move_then_lose)
    with pytest.raises(JobError, match="is listed in the manifest but missing, just before the commit"):
        pre.preprocess(fresh_raw, str(tmp_path / "ds"), store=Store())
    assert not list((tmp_path / "ds").glob("**/_manifest.json"))
    assert not list((tmp_path / "ds").glob("_attempt-*"))

    def move_then_cut(store: Store, src: str, dst: str) -> None:
        move(store, src, dst)
        if dst.endswith("part-00001-000.parquet"):
            path = Path(dst.removeprefix("file://"))
            path.write_bytes(path.read_bytes()[:-1])

    monkeypatch.setattr(mf, "move", move_then_cut)
    with pytest.raises(
        JobError, match=r"part-00001-000.parquet has \d+ bytes, its task wrote \d+, just before"
    ):
        pre.preprocess(fresh_raw, str(tmp_path / "ds2"), store=Store())
    assert not list((tmp_path / "ds2").glob("**/_manifest.json"))


@pytest.mark.slow
def test_a_run_that_fails_beside_another_leaves_it_whole(planted: Any, tmp_path: Path) -> None:
    """Two runs of the same input at once, one with a bad --master: the other commits a whole dataset."""
    _, _, raw = planted
    out = tmp_path / "ds"
    # One core and slow tasks: the write pass takes several waves, so the second run fails in the middle of it.
    slow = start_preprocess(raw, out, "--master", "local[1]", CIFARFLOW_TEST_TASK_DELAY_S="5")
    deadline = time.monotonic() + 300
    while not list(out.glob("**/part-*.parquet")):
        assert slow.poll() is None and time.monotonic() < deadline, slow.communicate()
        time.sleep(0.2)
    bad = start_preprocess(raw, out, "--master", "bogus://x")
    assert bad.wait(timeout=120) == 2
    stdout, stderr = slow.communicate(timeout=300)
    assert slow.returncode == 0, stderr
    store = Store()
    manifest, base = mf.load(store, str(out / stdout.split("dataset: ")[1].split()[0]))
    mf.verify(store, manifest, base)  # every listed shard is there, with its checksum
    assert [p.name for p in out.iterdir()] == [manifest.dataset_id]  # no attempt folder left


def test_a_bad_val_fraction_is_refused_by_the_api() -> None:
    with pytest.raises(InputError, match="outside"):
        pre.preprocess("x", "y", val_fraction=1.0, store=Store())


# -- end to end on S3 and GCS API servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mf.Manifest, bytes]:
    """A synthetic archive and the dataset a file:// run makes of it (the reference for the buckets)."""
    from cifarflow.data.synth import write_archive as synth_archive

    root = tmp_path_factory.mktemp("small")
    url = synth_archive(str(root), train=900, test=300, fmt="binary", classes=10, seed=11, store=Store())
    path = Path(url.removeprefix("file://"))
    store = Store()
    done = pre.preprocess(ingest(path, str(root / "work"), store), str(root / "ds"), seed=2, store=store)
    manifest, base = mf.load(store, done.dataset_url)
    return path, manifest, mf.read_checked(store, base, manifest.stats)


def same_dataset(
    store: Store, result: pre.PreprocessResult, reference: tuple[Path, mf.Manifest, bytes]
) -> None:
    _, want, want_stats = reference
    manifest, base = mf.load(store, result.dataset_url)
    assert manifest.dataset_id == want.dataset_id == result.dataset_id
    assert manifest.splits == want.splits  # same shard names, rows, sizes and checksums
    assert mf.read_checked(store, base, manifest.stats) == want_stats
    mf.verify(store, manifest, base)
    first = manifest.files("train")[0]
    table = pq.read_table(io.BytesIO(mf.read_checked(store, base, first)))
    assert table.num_rows == first.rows and table.schema.equals(mf.SCHEMA)


def test_end_to_end_on_s3(spark: Any, s3_server: Any, s3_bucket: str, small_archive: Any) -> None:
    store = s3_server.store()
    raw = ingest(small_archive[0], f"{s3_bucket}/work", store)
    result = pre.preprocess(raw, f"{s3_bucket}/datasets", seed=2, partitions=3, store=store)
    assert result.dataset_url.startswith(f"{s3_bucket}/datasets/ds-")
    # partitions=3 vs the reference's default: the same content, yet other shard names; compare what matters.
    manifest, _ = mf.load(store, result.dataset_url)
    assert {s: i.rows for s, i in manifest.splits.items()} == {
        s: i.rows for s, i in small_archive[1].splits.items()
    }
    again = pre.preprocess(raw, f"{s3_bucket}/datasets", seed=2, store=store)
    assert again.reused and again.dataset_id == result.dataset_id
    other = pre.preprocess(raw, f"{s3_bucket}/other", seed=2, store=store)
    same_dataset(store, other, small_archive)


def test_end_to_end_on_gcs(spark: Any, gcs_server: Any, gcs_bucket: str, small_archive: Any) -> None:
    store = gcs_server.store()
    raw = ingest(small_archive[0], f"{gcs_bucket}/work", store)
    result = pre.preprocess(raw, f"{gcs_bucket}/datasets", seed=2, store=store)
    same_dataset(store, result, small_archive)


# -- the whole command, as a user runs it -----------------------------------------------------------------------


def start_preprocess(raw: str, out: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``cifarflow preprocess`` in a fresh process (its own JVM) and its own process group, as a shell runs it."""
    command = [sys.executable, "-m", "cifarflow", "preprocess", "--raw", raw, "--out", str(out), *args]
    return subprocess.Popen(
        command,
        env={**os.environ, "CIFARFLOW_SPARK_UI": "0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize("cds", ["1", "0"])
def test_a_jvm_that_cannot_start_is_one_line_and_leaves_nothing(
    fresh_raw: str, tmp_path: Path, cds: str
) -> None:
    """A ``java`` that exits at once (a wrong JAVA_HOME, a bad JVM option): one error line quoting the JVM,
    exit 2, and nothing left: no dataset, no Spark scratch folder (class-data sharing off: the driver ends the
    JVM and owns its temporary folder), no marker of an archive in hand (on: this java has none yet)."""
    java_home = tmp_path / "java"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text("#!/bin/sh\necho 'Error: Could not create the Java Virtual Machine.' >&2\nexit 1\n")
    java.chmod(0o755)
    scratch, cache = tmp_path / "tmp", tmp_path / "cache"
    scratch.mkdir()
    out = tmp_path / "ds"
    env = {"JAVA_HOME": str(java_home), "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(cache)}
    proc = start_preprocess(fresh_raw, out, "--master", "local[1]", CIFARFLOW_SPARK_CDS=cds, **env)
    _, err = proc.communicate(timeout=120)
    assert_one_error_line(
        proc.returncode, err.splitlines(), "Spark's JVM exited while starting", "Could not create the Java"
    )
    assert not list(scratch.iterdir())
    assert not [p for p in cache.rglob("*") if p.is_file()]
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.slow
def test_the_command_is_quiet_and_a_task_error_is_its_last_line(planted: Any, tmp_path: Path) -> None:
    """A fresh process (its own JVM): stderr holds cifarflow's log lines and, on failure, the one error line —
    no Spark banner, no log4j warnings, no Java or Python stack traces; and, ended or failed, no temporary file
    left behind (the JVM is ended once its context has stopped: spark.ended_by_driver)."""
    _, _, raw = planted
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def preprocess(raw_url: str, out: Path) -> subprocess.CompletedProcess[str]:
        proc = start_preprocess(raw_url, out, TMPDIR=str(scratch))
        stdout, stderr = proc.communicate(timeout=600)
        assert list(scratch.iterdir()) == []
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    ok = preprocess(raw, tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    # Not even the JVM's "WARNING: Using incubator modules": everything is cifarflow's own log.
    noise = [line for line in ok.stderr.splitlines() if " INFO cifarflow." not in line]
    assert noise == [], ok.stderr
    assert ok.stdout.startswith("dataset: ds-")

    broken = tmp_path / "raw-copy"
    shutil.copytree(raw.removeprefix("file://"), broken)
    doctor(f"file://{broken}", "data_batch_2", pickle.dumps({b"data": _Evil()}, protocol=2))
    bad = preprocess(f"file://{broken}", tmp_path / "bad")
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.splitlines()
    assert lines[-1].startswith("error: unsafe pickle") and "(fix: " in lines[-1], bad.stderr
    # Not even the shutdown race of a failed job (TaskSchedulerImpl's RejectedExecutionException, workers
    # killed mid-handshake): only cifarflow's log and the error line.
    assert all(" INFO cifarflow." in x for x in lines[:-1]), bad.stderr
    no_dataset_left(tmp_path / "bad")


def archive_in(cache: Path) -> Path:
    """The class-data-sharing archive ``cifarflow preprocess`` uses with XDG_CACHE_HOME=cache."""
    java = jvm_archive.java_binary()
    assert java is not None
    return cache / "cifarflow" / "cds" / jvm_archive.archive_name(java)


def wait_for_archive(path: Path, timeout: float = 300.0) -> None:
    """The detached helper installs the archive once the JVM that wrote it has exited and it was checked."""
    deadline = time.monotonic() + timeout
    while not jvm_archive.archive_ok(path):
        assert time.monotonic() < deadline, sorted(p.name for p in path.parent.iterdir())
        time.sleep(1.0)
    assert not list(path.parent.glob("*.tmp")), "the helper leaves no temporary file"


@pytest.mark.slow
def test_the_jvm_class_archive_is_made_once_used_after_and_never_heard(planted: Any, tmp_path: Path) -> None:
    """A fresh cache (the run writes the archive as its JVM exits, a helper installs it), a populated one (the
    archive is mapped, not rewritten), a corrupt archive (garbage, or garbage after a valid magic number: made
    again, or refused by the JVM) and an unwritable cache folder: every run succeeds, writes the same dataset and
    prints nothing but cifarflow's own log lines."""
    _, _, raw = planted
    cache = tmp_path / "cache"
    archive = archive_in(cache)
    manifests: list[bytes] = []

    def preprocess(name: str, cache_home: Path) -> None:
        out = tmp_path / name
        proc = start_preprocess(raw, out, XDG_CACHE_HOME=str(cache_home))
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        noise = [line for line in stderr.splitlines() if " INFO cifarflow." not in line]
        assert noise == [] and stdout.startswith("dataset: ds-"), stderr + stdout
        (dataset,) = out.iterdir()
        manifests.append(dataset.name.encode() + (dataset / mf.MANIFEST).read_bytes())

    preprocess("fresh", cache)
    wait_for_archive(archive)
    installed = archive.stat().st_mtime_ns
    preprocess("populated", cache)
    assert archive.stat().st_mtime_ns == installed and not list(archive.parent.glob("*.tmp"))

    size = archive.stat().st_size
    archive.chmod(0o644)
    archive.write_bytes(jvm_archive.CDS_MAGIC + os.urandom(size - len(jvm_archive.CDS_MAGIC)))
    preprocess("refused", cache)  # the JVM refuses it and starts without
    archive.write_bytes(os.urandom(size))
    preprocess("garbage", cache)
    wait_for_archive(archive)  # not an archive at all: made again

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file where the cache folder should be")
    preprocess("unwritable", not_a_folder)
    assert not_a_folder.read_text().startswith("a file")
    assert len(set(manifests)) == 1, "the archive changes nothing the job writes"


def test_the_class_archive_can_be_switched_off(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CIFARFLOW_SPARK_CDS", "0")
    assert jvm_archive.ClassArchive.for_this_jvm() is None
    monkeypatch.setenv("CIFARFLOW_SPARK_CDS", "1")
    created = jvm_archive.ClassArchive.for_this_jvm()
    assert created is not None and created.creating is not None and created.creating.exists()
    assert "-XX:ArchiveClassesAtExit=" in created.options()
    # A second run while the first is still writing it neither uses nor writes an archive.
    assert jvm_archive.ClassArchive.for_this_jvm() is None


def test_the_jvm_stderr_keeps_what_a_user_can_act_on() -> None:
    pump = sparkmod.JvmStderr(io.BytesIO(b""))
    shown = [
        line
        for line in [
            "WARNING: Using incubator modules: jdk.incubator.vector",
            "[0.392s][warning][cds,dynamic] Unable to use shared archive. The top archive failed to load: a.jsa",
            "[1.2s][warning][cds] Skipping org/codehaus/janino/UnitCompiler$36: Signed JAR",
            "12:00:01 WARN spark TaskSchedulerImpl: Lost executor 0 on 127.0.0.1: worker lost",
            "java.util.concurrent.RejectedExecutionException: Task rejected",
            "\tat org.apache.spark.scheduler.TaskResultGetter.enqueueFailedTask(TaskResultGetter.scala:137)",
            "\t... 12 more",
            "Traceback (most recent call last):",
            '  File "daemon.py", line 264, in manager',
            "BrokenPipeError: [Errno 32] Broken pipe",
            "12:00:02 ERROR spark SparkContext: something a user should see",
        ]
        if pump.shown(line + "\n")
    ]
    assert shown == [
        "12:00:01 WARN spark TaskSchedulerImpl: Lost executor 0 on 127.0.0.1: worker lost",
        "java.util.concurrent.RejectedExecutionException: Task rejected",
        "12:00:02 ERROR spark SparkContext: something a user should see",
    ]
    pump.quiet.set()  # a job failed or was interrupted: its one error line says it all
    assert not pump.shown("12:00:03 ERROR spark TaskSchedulerImpl: Exception in statusUpdate\n")


class _StandInContext:
    """A SparkContext's cancelAllJobs, as the helper thread of :class:`spark_signals.Signals` calls it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancelAllJobs(self) -> None:
        self.cancelled.set()


# A py4j call blocked on a running job: code whose file is under py4j/, that returns (or, with fail, raises the
# job's error) once the jobs are cancelled.
PY4J_CALL = compile(
    "context.cancelled.wait(20)\nreturned.append(True)\nif fail: raise RuntimeError('job cancelled')",
    f"{os.sep}site-packages{os.sep}py4j{os.sep}java_gateway.py",
    "exec",
)


@pytest.mark.parametrize("fail", [False, True])
def test_a_signal_in_a_py4j_call_cancels_the_jobs_and_is_raised_outside_it(fail: bool) -> None:
    """The cause of the ctrl-c flake: Ctrl-C raised inside a py4j call broke its connection, and the clean-up's
    next JVM call failed with an error that replaced the KeyboardInterrupt (exit 2, "the Spark job failed:
    Answer from Java side is empty"). Now the call is left to return (the jobs are cancelled from another
    thread) and the interruption is raised in Python code, or by the session when the call's error comes
    first."""
    context = _StandInContext()
    returned: list[bool] = []
    main = threading.main_thread().ident
    assert main is not None
    with pytest.raises(KeyboardInterrupt) as raised, spark_signals.Signals(cast(Any, context)) as signals:
        threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
        try:
            exec(PY4J_CALL, {"context": context, "returned": returned, "fail": fail})
            time.sleep(10)  # back in Python code: the deferred signal lands here
        except RuntimeError:
            signals.hold()  # what the session does with the cancelled job's error
            raise
    assert context.cancelled.is_set() and returned == [True]  # the call was not cut short
    assert isinstance(raised.value.__context__, RuntimeError) == fail
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "code"),
    [("ctrl-c", 130), ("sigterm", 143), ("sigkill", -signal.SIGKILL)],
)
def test_a_signal_mid_job_ends_in_one_line_and_no_stack(
    planted: Any, tmp_path: Path, how: str, code: int
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it), ``kill`` (SIGTERM to the CLI) and
    ``kill -9`` while Spark tasks run: the interrupted line or nothing, never py4j's or the JVM's stacks (the JVM
    outlives a SIGKILLed driver for a moment and must not write to the terminal while it dies)."""
    _, _, raw = planted
    proc = start_preprocess(raw, tmp_path / "ds", CIFARFLOW_TEST_TASK_DELAY_S="60")
    assert proc.stderr is not None
    seen: list[str] = []
    while not any("default parallelism" in line for line in seen):
        line = proc.stderr.readline()
        assert line, "".join(seen)
        seen.append(line)
    time.sleep(3)  # the tasks are running (each sleeps for a minute)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    # communicate() returns once the JVM, which shares our stdout, has gone too.
    _, rest = proc.communicate(timeout=120)
    lines = "".join([*seen, rest]).splitlines()
    assert proc.returncode == code, lines
    if how == "sigkill":
        assert all(" INFO cifarflow." in x for x in lines), lines
    else:
        assert all(" INFO cifarflow." in x for x in lines[:-1]), lines
        assert lines[-1].startswith("error: ") and "(fix: rerun the same command" in lines[-1], lines
    no_dataset_left(tmp_path / "ds")
