"""The storage layer against the real servers: the same calls on file://, s3:// (moto) and gs://."""

from __future__ import annotations

import pickle

import pytest

from cifarflow.errors import StorageError
from cifarflow.storage import StorageConfig, Store, join, normalize, redact


def _roundtrip(store: Store, base: str) -> None:
    url = join(base, "a", "b.bin")
    store.write_bytes(url, b"hello")
    assert store.exists(url)
    assert store.read_bytes(url) == b"hello"
    assert store.size(url) == 5
    store.write_text(join(base, "a", "c.txt"), "text")
    assert [u.rsplit("/", 1)[1] for u in store.list(join(base, "a"))] == ["b.bin", "c.txt"]
    with store.open(join(base, "a", "d.bin"), "wb") as handle:
        handle.write(b"streamed")
    assert store.read_bytes(join(base, "a", "d.bin")) == b"streamed"
    store.remove(join(base, "a"), recursive=True)
    assert not store.exists(url)
    assert store.list(join(base, "a")) == []


def test_local_roundtrip(tmp_path) -> None:
    _roundtrip(Store(), str(tmp_path))
    # Atomic writes leave no temporary files behind.
    store = Store()
    store.write_bytes(str(tmp_path / "x" / "y"), b"1")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y"]


def test_s3_roundtrip(s3_server, s3_bucket) -> None:
    _roundtrip(s3_server.store(), s3_bucket)


def test_gcs_roundtrip(gcs_server, gcs_bucket) -> None:
    _roundtrip(gcs_server.store(), gcs_bucket)


def test_store_pickles_for_spark_tasks(s3_server) -> None:
    store = pickle.loads(pickle.dumps(s3_server.store()))
    assert store.config.s3_endpoint == s3_server.endpoint


def test_normalize_and_redact(tmp_path) -> None:
    assert normalize(str(tmp_path)) == f"file://{tmp_path}"
    with pytest.raises(StorageError, match="unsupported URL scheme 'ftp'"):
        normalize("ftp://host/x")
    assert redact("https://user:secret@example.com/x") == "https://example.com/x"


def test_unreachable_endpoint_is_one_clear_error(s3_server, dead_endpoint) -> None:
    store = Store(StorageConfig(s3_endpoint=dead_endpoint, connect_timeout=1))
    with pytest.raises(StorageError, match="cannot reach the storage endpoint"):
        store.exists("s3://nobucket/x")


def test_missing_bucket(s3_server) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        s3_server.store().check_reachable("s3://no-such-bucket-here/x")
