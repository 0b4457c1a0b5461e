"""Ingest's overlapped work: archive hashing on a helper thread, members uploaded to a bucket concurrently."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from cifarflow.data import ingest, synth
from cifarflow.data.ingest import land, source
from cifarflow.errors import StorageError
from cifarflow.storage import Store


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = synth.write_archive(
        str(tmp_path_factory.mktemp("archive")),
        train=500,
        test=100,
        fmt="python",
        classes=10,
        seed=3,
        store=Store(),
    )
    return Path(url[len("file://") :])


def test_hashing_reader_matches_hashlib_over_many_reads() -> None:
    """Updates run on another thread, several reads ahead: the sums must still cover the bytes in order."""
    data = bytes(range(256)) * 40_000  # ~10 MB: more reads than the hashing thread may lag behind
    reader = source.HashingReader(io.BytesIO(data), md5=True)
    buf = bytearray(100_003)  # an odd size, so chunk boundaries move
    while reader.readinto(buf):
        pass
    assert reader.bytes == len(data)
    assert reader.md5.hexdigest() == hashlib.md5(data).hexdigest()
    assert reader.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


def test_bucket_members_upload_concurrently_and_commit_last(
    s3_server, s3_bucket, archive, monkeypatch
) -> None:
    store = s3_server.store()
    order: list[str] = []
    running, most = 0, 0
    lock = threading.Lock()
    write_bytes = store.write_bytes

    def slow(url: str, data: bytes) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2 if "data_batch" in url and "_done" not in url else 0)
        write_bytes(url, data)
        with lock:
            running -= 1
            order.append(url)

    monkeypatch.setattr(store, "write_bytes", slow)
    result = ingest.ingest(str(archive), s3_bucket + "/work", store=store)
    assert result.written == result.members == 7
    assert 2 <= most <= land.UPLOADS
    assert order[-1].endswith("/raw/_ingest.json")  # the commit waits for every member and record
    assert sum("/_done/" in url for url in order) == 7
    index = ingest.load_raw(store, result.raw_url)
    assert {m.path for m in index.members} >= {"data_batch_1", "data_batch_5", "test_batch", "batches.meta"}


def test_a_failed_upload_commits_nothing_and_the_rerun_finishes(
    s3_server, s3_bucket, archive, monkeypatch
) -> None:
    store = s3_server.store()
    write_bytes = store.write_bytes

    def broken(url: str, data: bytes) -> None:
        if url.endswith("/data_batch_3"):
            raise StorageError("the bucket refused data_batch_3", "try again")
        write_bytes(url, data)

    monkeypatch.setattr(store, "write_bytes", broken)
    dest = s3_bucket + "/work"
    with pytest.raises(StorageError, match="refused data_batch_3"):
        ingest.ingest(str(archive), dest, store=store)
    assert not store.exists(dest + "/raw/_ingest.json")

    monkeypatch.setattr(store, "write_bytes", write_bytes)
    again = ingest.ingest(str(archive), dest, store=store)
    assert not again.reused and 1 <= again.written < again.members  # what had landed is skipped
    assert store.exists(dest + "/raw/_ingest.json")
