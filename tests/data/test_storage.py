"""The storage layer against the real servers: the same calls on file://, s3:// (moto) and gs://."""

from __future__ import annotations

import errno
import pickle
import tarfile

import pytest

from cifarflow.errors import InputError, StorageError
from cifarflow.storage import StorageConfig, Store, join, normalize, redact, translate


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


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sizes_lists_the_files_under_a_folder(tmp_path, s3_server, s3_bucket, where: str) -> None:
    store, base = (Store(), str(tmp_path)) if where == "local" else (s3_server.store(), s3_bucket)
    store.write_bytes(join(base, "d", "a"), b"12345")
    store.write_bytes(join(base, "d", "b"), b"")
    store.write_bytes(join(base, "d", "sub", "c"), b"x")
    assert store.sizes(join(base, "d")) == {"a": 5, "b": 0}
    assert store.sizes(join(base, "none")) == {}


def test_move_file_renames_on_one_disk_and_uploads_to_a_bucket(tmp_path, s3_server, s3_bucket) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"member")
    inode = spool.stat().st_ino
    Store().move_file(str(spool), str(tmp_path / "raw" / "m"))
    assert not spool.exists() and (tmp_path / "raw" / "m").read_bytes() == b"member"
    assert (tmp_path / "raw" / "m").stat().st_ino == inode  # renamed, not copied
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["m"]
    spool.write_bytes(b"to a bucket")
    store = s3_server.store()
    store.move_file(str(spool), join(s3_bucket, "m"))
    assert not spool.exists() and store.read_bytes(join(s3_bucket, "m")) == b"to a bucket"


def test_move_folder_renames_or_merges_into_what_is_there(tmp_path) -> None:
    store = Store()
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "m").write_bytes(b"member")
    (tmp_path / "a" / "sub" / "r").write_bytes(b"record")
    inode = (tmp_path / "a").stat().st_ino
    store.move_folder(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and (tmp_path / "b").stat().st_ino == inode  # one rename
    # Into a folder that holds files already: each file replaced or added, the others left as they are.
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "m").write_bytes(b"MEMBER")
    (tmp_path / "c" / "sub" / "new").write_bytes(b"n")
    store.move_folder(str(tmp_path / "c"), str(tmp_path / "b"))
    assert not (tmp_path / "c").exists()
    got = {
        str(p.relative_to(tmp_path / "b")): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()
    }
    assert got == {"m": b"MEMBER", "sub/r": b"record", "sub/new": b"n"}


class _Boom(Exception):
    """A writer's own failure in the middle of an atomic write."""


def _write_atomic_is_all_or_nothing(store: Store, base: str) -> None:
    url = join(base, "w", "archive.tar.gz")
    with store.write_atomic(url) as handle:
        handle.write(b"part 1, ")
        handle.write(b"part 2")
    assert store.read_bytes(url) == b"part 1, part 2"
    with pytest.raises(_Boom), store.write_atomic(url) as handle:
        handle.write(b"half of a new version")
        raise _Boom
    assert store.read_bytes(url) == b"part 1, part 2"  # the old version stays whole
    failed = join(base, "w", "never.bin")
    with pytest.raises(_Boom), store.write_atomic(failed) as handle:
        handle.write(b"x")
        raise _Boom
    assert not store.exists(failed)
    assert [u.rsplit("/", 1)[1] for u in store.list(join(base, "w"))] == ["archive.tar.gz"]  # no temp file


def test_write_atomic_local(tmp_path) -> None:
    _write_atomic_is_all_or_nothing(Store(), str(tmp_path))


def test_write_atomic_s3(s3_server, s3_bucket) -> None:
    _write_atomic_is_all_or_nothing(s3_server.store(), s3_bucket)


def test_write_atomic_gcs(gcs_server, gcs_bucket) -> None:
    _write_atomic_is_all_or_nothing(gcs_server.store(), gcs_bucket)


def test_write_atomic_full_or_read_only_disk_is_one_line(tiny_fs) -> None:
    url = str(tiny_fs.path / "big.bin")
    with (
        pytest.raises(StorageError, match=f"^no space left writing {url} "),
        Store().write_atomic(url) as out,
    ):
        out.write(b"\0" * (2 << 20))
    assert list(tiny_fs.path.iterdir()) == []
    tiny_fs.remount("ro")
    with pytest.raises(StorageError, match="read-only file system"), Store().write_atomic(url) as out:
        out.write(b"x")


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


@pytest.mark.parametrize(
    "error",
    [
        InputError("train: label 401 is out of range 0..99 for cifar100", "check --classes"),
        InputError("cifar-10-batches-py/data_batch_Forbidden: holds no images", "fetch it again"),
        ValueError("AccessDenied 401 Forbidden: Connection refused, Name or service not known"),
        tarfile.ReadError("InvalidAccessKeyId NoSuchBucket"),
    ],
)
def test_errors_are_classified_by_type_never_by_text(error: Exception) -> None:
    """The block under translate() also runs the caller's code: its errors pass through as they are."""
    with pytest.raises(type(error)) as raised, translate("s3://bucket/x"):
        raise error
    assert raised.value is error


def test_storage_errors_are_classified_by_type() -> None:
    with pytest.raises(StorageError, match="cannot reach the storage endpoint"), translate("s3://b/x"):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    with pytest.raises(StorageError, match="no space left writing file:///x"), translate("file:///x"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StorageError, match="read-only file system"), translate("file:///x"):
        raise OSError(errno.EROFS, "Read-only file system")


def test_a_gcs_403_is_known_by_where_gcsfs_raised_it() -> None:
    """gcsfs turns HTTP 403 into a bare OSError; its origin (gcsfs.retry), not its text, says what it is."""
    from gcsfs.retry import validate_response

    with pytest.raises(StorageError, match="credentials rejected for gs://b/x"), translate("gs://b/x"):
        validate_response(403, b'{"error": {"message": "nope"}}', "b/x")
    with pytest.raises(OSError, match="Forbidden"), translate("gs://b/x"):
        raise OSError("Forbidden: b/x")  # the same text from anywhere else is not a credentials error


def test_gcs_without_network_fails_before_any_request(monkeypatch, dead_endpoint) -> None:
    """gcsfs retries a request six times with back-off (over a minute): a dead endpoint is found first."""
    import gcsfs

    async def no_requests(*args: object, **kwargs: object) -> None:
        raise AssertionError("gcsfs sent a request (and would retry it with back-off)")

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead_endpoint)
    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", no_requests)
    with pytest.raises(StorageError, match=r"cannot reach the storage endpoint for gs://b/x \(127\.0\.0\.1:"):
        Store().exists("gs://b/x")
