"""``cifarflow ingest``: streaming, checksums, idempotence, resume, and one clear line for every bad input."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cifarflow.cli import main
from cifarflow.data import cifar, content_index, ingest, synth
from cifarflow.data.ingest import decompress, stream
from cifarflow.data.ingest.land import SPOOL_PREFIX, Landing
from cifarflow.errors import InputError
from cifarflow.storage import StorageConfig, Store

TRAIN, TEST = 300, 100


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic archives in all four CIFAR variants."""
    out = tmp_path_factory.mktemp("archives")
    paths = {}
    for fmt, classes in [("python", 10), ("binary", 10), ("python", 100), ("binary", 100)]:
        url = synth.write_archive(
            str(out), train=TRAIN, test=TEST, fmt=fmt, classes=classes, seed=1, store=Store()
        )
        paths[f"cifar{classes}-{fmt}"] = Path(url[len("file://") :])
    return paths


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def one_error_line(code: int, err: str) -> str:
    """The bad-input contract: exit 2 and exactly one line, ``error: <problem> (fix: <fix>)``."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "(fix: " in err, err
    return err


def run_ingest(
    capsys: pytest.CaptureFixture[str], source: str, dest: str, *extra: str
) -> tuple[int, str, str]:
    return run_cli(capsys, "ingest", "--source", source, "--dest", dest, *extra)


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only errors on stderr, so a test can assert the error is the one and only line."""
    monkeypatch.setenv("CIFARFLOW_LOG_LEVEL", "ERROR")


def check_raw(store: Store, raw_url: str, layout: str) -> dict[str, int]:
    """Decode every landed member through cifar.py; returns images per split."""
    index = ingest.load_raw(store, raw_url)
    assert index.layout == layout
    lay = index.layout_info
    counts = {"train": 0, "test": 0}
    names = [m for m in index.members if m.path == lay.meta]
    assert len(names) == 1
    assert len(cifar.label_names(store.read_bytes(index.url(raw_url, names[0])), lay)) == lay.num_classes
    for member in index.members:
        data = store.read_bytes(index.url(raw_url, member))
        assert len(data) == member.bytes
        if member.split == "meta":
            assert hashlib.sha256(data).hexdigest() == member.sha256
            continue
        assert member.sha256 is None  # a data member: its content index covers it
        decode = cifar.decode_python if lay.kind == "python" else cifar.decode_binary
        batch = decode(data, lay, member.name)
        assert len(batch) == member.rows
        counts[member.split] += len(batch)
        # Its content index: a label and the hash of the CHW planes an image, in order, as recorded.
        hashes_url = index.hashes_url(raw_url, member)
        assert hashes_url is not None
        records = store.read_bytes(hashes_url)
        assert hashlib.sha256(records).hexdigest() == member.hashes
        labels, digests = content_index.decode(records)
        np.testing.assert_array_equal(labels, batch.labels)
        np.testing.assert_array_equal(digests, content_index.content_hashes(batch.planes))
    return counts


# -- happy paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cifar10-python", "cifar10-binary", "cifar100-python", "cifar100-binary"])
def test_ingest_local(archives: dict[str, Path], tmp_path: Path, layout: str) -> None:
    store = Store()
    result = ingest.ingest(str(archives[layout]), str(tmp_path / "work"), store=store)
    assert result.layout == layout and not result.reused
    assert result.identity == sha256_of(archives[layout])
    assert result.raw_url == f"file://{tmp_path}/work/raw"
    assert check_raw(store, result.raw_url, layout) == {"train": TRAIN, "test": TEST}
    index = ingest.load_raw(store, result.raw_url)
    assert index.folder == result.identity[:16]
    assert index.archive.bytes == archives[layout].stat().st_size
    assert index.archive.md5 is None  # nothing to check it against: not computed
    # The members land byte for byte as they are in the archive.
    with tarfile.open(archives[layout]) as tar:
        for member in index.members:
            original = tar.extractfile(member.name).read()  # type: ignore[union-attr]
            assert (tmp_path / "work" / "raw" / index.folder / member.path).read_bytes() == original


def test_ingest_to_s3(s3_server, s3_bucket, archives) -> None:
    store = s3_server.store()
    result = ingest.ingest(str(archives["cifar10-python"]), s3_bucket + "/work", store=store)
    assert result.raw_url == s3_bucket + "/work/raw"
    assert check_raw(store, result.raw_url, "cifar10-python") == {"train": TRAIN, "test": TEST}


def test_ingest_to_gcs(gcs_server, gcs_bucket, archives) -> None:
    store = gcs_server.store()
    result = ingest.ingest(str(archives["cifar10-binary"]), gcs_bucket + "/work", store=store)
    assert check_raw(store, result.raw_url, "cifar10-binary") == {"train": TRAIN, "test": TEST}


@pytest.mark.parametrize("upload", ["single-part", "multipart"])
def test_bucket_source_reused_without_reading(s3_server, s3_bucket, archives, monkeypatch, upload) -> None:
    store = s3_server.store()
    src = s3_bucket + "/in/cifar-10-python.tar.gz"
    data = archives["cifar10-python"].read_bytes()
    if upload == "single-part":
        store.write_bytes(src, data)  # ETag = md5
    else:
        # A multipart upload's ETag is not an md5 ("<hash>-1"); the recorded size + ETag still identify it.
        client, bucket, key = s3_server.client(), s3_bucket[len("s3://") :], "in/cifar-10-python.tar.gz"
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=data)["ETag"]
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]},
        )
    first = ingest.ingest(src, s3_bucket + "/work", store=store)
    assert not first.reused and first.identity == sha256_of(archives["cifar10-python"])

    def no_reads(*args, **kwargs):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(ingest, "open_archive", no_reads)
    assert ingest.ingest(src, s3_bucket + "/work", store=store).reused


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (the stand-in for a download site) serving a folder."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_ingest_from_http(http_root, archives, tmp_path) -> None:
    base, root = http_root
    shutil.copy(archives["cifar100-python"], root / "c100.tar.gz")
    md5, sha256 = md5_of(archives["cifar100-python"]), sha256_of(archives["cifar100-python"])
    # With the md5 known up front: one streaming pass into the folder it names, checked at the end.
    known = ingest.ingest(f"{base}/c100.tar.gz", str(tmp_path / "a"), store=Store(), md5=md5.upper())
    # Without it: spooled to local disk once (the folder is named by the sha256), then landed.
    unknown = ingest.ingest(f"{base}/c100.tar.gz", str(tmp_path / "b"), store=Store())
    assert known.identity == unknown.identity == sha256
    a, b = (ingest.load_raw(Store(), str(tmp_path / d / "raw")) for d in "ab")
    assert (a.folder, a.archive.md5, b.folder, b.archive.md5) == (md5[:16], md5, sha256[:16], None)
    assert a.members == b.members
    assert files_under(tmp_path / "a" / "raw" / a.folder) == files_under(tmp_path / "b" / "raw" / b.folder)


# -- idempotence and resume ----------------------------------------------------------------------------------


def counting(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every write the store makes."""
    writes: list[str] = []
    for name in ("write_bytes", "put_file", "move_file"):
        original = getattr(store, name)

        def wrapped(*args, _original=original, _url=0 if name == "write_bytes" else 1, **kwargs):
            writes.append(str(args[_url]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(store, name, wrapped)
    return writes


def test_second_run_does_no_work(archives, tmp_path, monkeypatch) -> None:
    store = Store()
    src, dest = str(archives["cifar10-python"]), str(tmp_path / "work")
    first = ingest.ingest(src, dest, store=store)
    assert first.written == first.members == 7  # meta + 5 batches + test
    writes = counting(store, monkeypatch)
    again = ingest.ingest(src, dest, store=store)
    assert again.reused and writes == []
    assert again.identity == first.identity


def test_resume_after_a_crash(archives, tmp_path, monkeypatch) -> None:
    src = str(archives["cifar10-binary"])
    clean = ingest.ingest(src, str(tmp_path / "clean"), store=Store())
    marker = (tmp_path / "clean" / "raw" / "_ingest.json").read_text()

    # "Die" at the 14th write: the meta file (2 writes) and batches 1-3 (content index, member, record: 3 each)
    # have landed with their completion records, batch 4 without one (so it must be redone), the rest not at
    # all.
    store = Store()
    writes = counting(store, monkeypatch)
    original = store.write_bytes

    def crash(url: str, data: bytes) -> None:
        if len(writes) >= 13:
            raise KeyboardInterrupt
        original(url, data)

    monkeypatch.setattr(store, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest(src, str(tmp_path / "work"), store=store)
    raw = tmp_path / "work" / "raw"
    assert not (raw / "_ingest.json").exists()
    # A fresh local landing waits for the sha256 to name its folder; the rerun resumes in the same one.
    assert [p.name.startswith("_landing-") for p in raw.iterdir()] == [True]
    with pytest.raises(InputError, match="never finished"):
        ingest.load_raw(Store(), str(raw))

    store = Store()
    writes = counting(store, monkeypatch)
    resumed = ingest.ingest(src, str(tmp_path / "work"), store=store)
    assert not resumed.reused
    assert resumed.written == clean.members - 4  # batch 4, batch 5, test: the others were skipped
    assert (raw / "_ingest.json").read_text() == marker
    assert writes[-1].endswith("/raw/_ingest.json")


def test_a_local_archive_into_a_fresh_folder_is_read_once(archives, tmp_path, monkeypatch) -> None:
    """No pre-pass: the members land under a provisional folder, renamed to the sha256 the landing pass
    computed; the result is what a run that hashed the archive first commits (into a folder that held another
    archive's commit, so that it cannot skip the pre-pass)."""
    src = archives["cifar10-binary"]
    ingest.ingest(str(archives["cifar10-python"]), str(tmp_path / "known"), store=Store())
    ingest.ingest(str(src), str(tmp_path / "known"), store=Store())
    shutil.rmtree(tmp_path / "known" / "raw" / sha256_of(archives["cifar10-python"])[:16])
    opened: list[str] = []
    real_open = ingest.open_archive

    def counted(source, store):  # type: ignore[no-untyped-def]
        opened.append(source.url)
        return real_open(source, store)

    monkeypatch.setattr(ingest, "open_archive", counted)
    monkeypatch.setattr(ingest, "hash_stream", None)  # the pre-pass would call it
    once = ingest.ingest(str(src), str(tmp_path / "once"), store=Store())
    assert len(opened) == 1  # the landing pass (the format sniff reads a few blocks on its own)
    raw = tmp_path / "once" / "raw"
    assert (raw / "_ingest.json").read_text() == (tmp_path / "known" / "raw" / "_ingest.json").read_text()
    assert {p.name for p in raw.iterdir()} == {"_ingest.json", once.identity[:16]}
    assert files_under(raw) == files_under(tmp_path / "known" / "raw")


def test_a_one_read_landing_merges_into_an_uncommitted_folder(archives, tmp_path) -> None:
    """What a crashed run of the same archive left under its sha256 (no commit) is completed, not lost."""
    src = archives["cifar10-python"]
    store = Store()
    first = ingest.ingest(str(src), str(tmp_path / "w"), store=store)
    raw = tmp_path / "w" / "raw"
    marker = (raw / "_ingest.json").read_text()
    (raw / "_ingest.json").unlink()
    (raw / first.identity[:16] / "data_batch_3").unlink()
    again = ingest.ingest(str(src), str(tmp_path / "w"), store=store)
    assert not again.reused and (raw / "_ingest.json").read_text() == marker
    assert {p.name for p in raw.iterdir()} == {"_ingest.json", first.identity[:16]}
    assert check_raw(store, first.raw_url, "cifar10-python") == {"train": TRAIN, "test": TEST}


def test_a_new_archive_replaces_the_commit(archives, tmp_path) -> None:
    store = Store()
    dest = str(tmp_path / "work")
    ingest.ingest(str(archives["cifar10-python"]), dest, store=store)
    result = ingest.ingest(str(archives["cifar10-binary"]), dest, store=store)
    assert ingest.load_raw(store, result.raw_url).layout == "cifar10-binary"


def test_load_raw_without_ingest(tmp_path) -> None:
    with pytest.raises(InputError, match="no ingested archive"):
        ingest.load_raw(Store(), str(tmp_path / "raw"))


# -- bad input: one line, exit 2, nothing committed ----------------------------------------------------------


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def py_batch(
    rows: int, label: object = 0, width: int = 3072, labels: object = None, key: bytes = b"labels"
) -> bytes:
    data = np.zeros((rows, width), np.uint8)
    values = [label] * rows if labels is None else labels
    return pickle.dumps({b"data": data, key: values, b"batch_label": b"x"}, protocol=2)


META = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2)
META_M = ("batches.meta", META)
TEST_M = ("test_batch", py_batch(2))


def tar_of(tmp: Path, members: list[tuple[str, bytes]]) -> Path:
    """A CIFAR-10 python tarball with members in this order; a member's data may be a link type (SYMTYPE,
    LNKTYPE) instead of bytes, pointing at data_batch_1. Names without a folder go under the layout's root."""
    path = tmp / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name if "/" in name else f"cifar-10-batches-py/{name}")
            if data in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.type, info.linkname = data, "cifar-10-batches-py/data_batch_1"
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar100_tar(tmp: Path, train: bytes) -> Path:
    meta = pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}, protocol=2)
    test = py_batch(2, key=b"fine_labels")
    return make_tar(
        tmp / "c100.tar.gz",
        {"cifar-100-python/meta": meta, "cifar-100-python/train": train, "cifar-100-python/test": test},
    )


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def flip_pixel_bit(data: bytes) -> bytes:
    """One bit of one pixel, in a gzip stream of stored (uncompressed) blocks: every decoder accepts it."""
    tar = gzip.decompress(data)
    stored = gzip.compress(tar, compresslevel=0, mtime=0)
    offset = stored.index(tar[len(tar) // 2 : len(tar) // 2 + 64])
    return flip(stored, offset)


def damaged(tmp: Path, archives: dict[str, Path], change: Callable[[bytes], bytes]) -> Path:
    (tmp / "damaged.tar.gz").write_bytes(change(archives["cifar10-binary"].read_bytes()))
    return tmp / "damaged.tar.gz"


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo owned",))


def cifar_tar(tmp: Path, **batches: bytes) -> Path:
    members = {"cifar-10-batches-py/batches.meta": META}
    members.update({f"cifar-10-batches-py/{k}": v for k, v in batches.items()})
    return make_tar(tmp / "bad.tar.gz", members)


def truncated(tmp: Path, archives: dict[str, Path]) -> Path:
    data = archives["cifar10-python"].read_bytes()
    (tmp / "cut.tar.gz").write_bytes(data[: len(data) * 6 // 10])
    return tmp / "cut.tar.gz"


def corrupt(tmp: Path, archives: dict[str, Path]) -> Path:
    (tmp / "noise.tar.gz").write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    return tmp / "noise.tar.gz"


BAD: dict[str, tuple[Callable[[Path, dict[str, Path]], Path], str]] = {
    "truncated": (truncated, "is truncated"),
    "corrupt": (corrupt, "is not a readable tar.gz"),
    "not cifar": (lambda t, a: make_tar(t / "x.tar.gz", {"photos/cat.jpg": b"\xff"}), "not a CIFAR-10/100"),
    "no batches": (lambda t, a: cifar_tar(t), "holds no train images"),
    "zero rows": (lambda t, a: cifar_tar(t, data_batch_1=py_batch(0), test_batch=py_batch(0)), "no images"),
    "no test split": (lambda t, a: cifar_tar(t, data_batch_1=py_batch(3)), "holds no test images"),
    "unsafe pickle": (
        lambda t, a: cifar_tar(t, data_batch_1=pickle.dumps({b"data": Exploit()}, protocol=2)),
        "unsafe pickle: it tries to load posix.system",
    ),
    "wrong image size": (lambda t, a: cifar_tar(t, data_batch_1=py_batch(2, width=1024)), "shape 2x1024"),
    "label out of range": (lambda t, a: cifar_tar(t, data_batch_1=py_batch(2, label=10)), "label 10 is out"),
    # Labels must be integers: nothing is rounded, parsed or reshaped into one.
    **{
        f"label {name}": (
            lambda t, a, v=value: cifar_tar(t, data_batch_1=py_batch(2, label=v), test_batch=py_batch(2)),
            message,
        )
        for name, value, message in [
            ("2.7", 2.7, "label 2.7 (float) is not an integer"),
            ("'3'", "3", "label '3' (str) is not an integer"),
            ("b'3'", b"3", "label b'3' (bytes) is not an integer"),
            ("True", True, "label True (bool) is not an integer"),
            ("None", None, "label None (NoneType) is not an integer"),
            ("NaN", float("nan"), "label nan (float) is not an integer"),
            ("2**70", 2**70, "label 1180591620717411303424 is out of range 0..9"),
            ("dict", {0: 1}, "label {0: 1} (dict) is not an integer"),
            ("[[x]]", [1], "label [1] (list) is not an integer"),
        ]
    },
    "labels a scalar": (
        lambda t, a: cifar_tar(t, data_batch_1=py_batch(2, labels=7), test_batch=py_batch(2)),
        "labels are a int, expected a list of integers",
    ),
    "labels a 2-d array": (
        lambda t, a: cifar_tar(t, data_batch_1=py_batch(2, labels=np.zeros((2, 1), np.int64))),
        "labels are a int64 array of shape (2, 1)",
    ),
    "more labels than images": (
        lambda t, a: cifar_tar(t, data_batch_1=py_batch(2, labels=[0, 0, 0]), test_batch=py_batch(2)),
        "2 images but 3 labels",
    ),
    # An error's text must not decide its kind: these once read as "credentials rejected"/"cannot reach".
    "CIFAR-100 label 401": (
        lambda t, a: cifar100_tar(t, train=py_batch(4, 401, key=b"fine_labels")),
        "label 401 is out of range",
    ),
    "401 labels for 400 images": (
        lambda t, a: cifar100_tar(t, train=py_batch(400, labels=[1] * 401, key=b"fine_labels")),
        "400 images but 401 labels",
    ),
    "a member named ...Forbidden": (
        lambda t, a: cifar_tar(t, data_batch_Forbidden=py_batch(2), test_batch=py_batch(2)),
        "unexpected member cifar-10-batches-py/data_batch_Forbidden",
    ),
    "a member named ...Connection refused": (
        lambda t, a: cifar_tar(
            t, **{"data_batch_1Connection refused": py_batch(2), "test_batch": py_batch(2)}
        ),
        "unexpected member cifar-10-batches-py/data_batch_1Connection refused",
    ),
    "a member name over 255 characters": (
        lambda t, a: cifar_tar(t, **{"data_batch_" + "1" * 300: py_batch(2), "test_batch": py_batch(2)}),
        "(331 characters)",
    ),
    # Members that must not land twice, or not at all.
    "duplicate member, same bytes": (
        lambda t, a: tar_of(
            t, [META_M, ("data_batch_1", py_batch(2)), ("data_batch_1", py_batch(2)), TEST_M]
        ),
        "holds cifar-10-batches-py/data_batch_1 twice",
    ),
    "duplicate member, other bytes": (
        lambda t, a: tar_of(
            t, [META_M, ("data_batch_1", py_batch(2)), ("data_batch_1", py_batch(3)), TEST_M]
        ),
        "holds cifar-10-batches-py/data_batch_1 twice",
    ),
    "duplicate member by a ./ alias": (
        lambda t, a: tar_of(
            t,
            [
                META_M,
                ("data_batch_1", py_batch(2)),
                ("./cifar-10-batches-py/data_batch_1", py_batch(2)),
                TEST_M,
            ],
        ),
        "as cifar-10-batches-py/data_batch_1 and ./cifar-10-batches-py/data_batch_1",
    ),
    "a symlink named data_batch_2": (
        lambda t, a: tar_of(
            t, [META_M, ("data_batch_1", py_batch(2)), ("data_batch_2", tarfile.SYMTYPE), TEST_M]
        ),
        "cifar-10-batches-py/data_batch_2 is a symlink",
    ),
    "a hard link named data_batch_2": (
        lambda t, a: tar_of(
            t, [META_M, ("data_batch_1", py_batch(2)), ("data_batch_2", tarfile.LNKTYPE), TEST_M]
        ),
        "cifar-10-batches-py/data_batch_2 is a hard link",
    ),
    "a missing batch": (
        lambda t, a: cifar_tar(t, data_batch_1=py_batch(2), data_batch_3=py_batch(2), test_batch=py_batch(2)),
        "2 train batches up to data_batch_3 but no cifar-10-batches-py/data_batch_2",
    ),
    "a member over --max-bytes": (
        lambda t, a: cifar_tar(t, data_batch_1=py_batch(400), test_batch=py_batch(2)),
        "data_batch_1 would expand to 1229911 bytes",
    ),
    "an archive over --max-bytes": (
        lambda t, a: cifar_tar(t, **{f"data_batch_{i}": py_batch(300) for i in range(1, 5)}),
        "the archive expands to more than 1000000 bytes, over the --max-bytes limit of 1000000",
    ),
    # Corruption the tar reader alone never sees: only the gzip trailer's CRC-32 and length catch it.
    **{
        f"gzip: {name}": (lambda t, a, c=change: damaged(t, a, c), message)
        for name, change, message in [
            ("a flipped pixel bit", flip_pixel_bit, "is corrupt (BadGzipFile: CRC check failed"),
            ("a bad CRC", lambda b: flip(b, len(b) - 8), "is corrupt (BadGzipFile: CRC check failed"),
            (
                "a bad ISIZE",
                lambda b: flip(b, len(b) - 1),
                "is corrupt (BadGzipFile: Incorrect length of data",
            ),
            *(
                (f"cut by {n} bytes", lambda b, n=n: b[:-n], "is truncated (Compressed file ended")
                for n in range(1, 9)
            ),
        ]
    },
}
MAX_BYTES = {"a member over --max-bytes": "1000000", "an archive over --max-bytes": "1000000"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_archive(case: str, archives, tmp_path, capsys, quiet) -> None:
    build, message = BAD[case]
    src = build(tmp_path, archives)
    dest = tmp_path / "work"
    extra = ("--max-bytes", MAX_BYTES[case]) if case in MAX_BYTES else ()
    code, _, err = run_ingest(capsys, str(src), str(dest), *extra)
    assert message in one_error_line(code, err)
    assert "credentials" not in err and "cannot reach" not in err  # an input error stays an input error
    assert files_under(dest) == []  # nothing committed, nothing half-written


@pytest.mark.parametrize("protocol", range(5))  # numpy pickles protocol 5 through a global CIFAR never has
def test_pickles_read_from_views_of_the_buffer(protocol: int) -> None:
    """The restricted unpickler reads views of the buffer it is given (bytes or bytearray), whatever the
    protocol (0 and 1 read names by line; 4 reads frames), and what it returns shares no memory with it."""
    images = np.random.default_rng(protocol).integers(0, 256, (3, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"b", b"labels": [0, 9, 3], b"data": images, b"filenames": [b"a.png"] * 3}
    data = pickle.dumps(batch, protocol=protocol)
    for given in (data, bytearray(data)):
        got = cifar.restricted_loads(given)
        assert got.keys() == batch.keys() and got[b"labels"] == [0, 9, 3]
        np.testing.assert_array_equal(got[b"data"], images)
        if isinstance(given, bytearray):
            given[:] = bytes(len(given))  # a reused buffer must not change what was decoded from it
            np.testing.assert_array_equal(got[b"data"], images)
    with pytest.raises(InputError, match="not a readable CIFAR pickle"):
        cifar.restricted_loads(bytearray(data[: len(data) // 2]))


def test_the_gil_is_handed_over_promptly_only_while_members_land(archives, tmp_path, monkeypatch) -> None:
    seen: list[float] = []
    land = stream.land_whole
    monkeypatch.setattr(stream, "land_whole", lambda *a: seen.append(sys.getswitchinterval()) or land(*a))
    before = sys.getswitchinterval()
    ingest.ingest(str(archives["cifar10-python"]), str(tmp_path / "out"), store=Store())
    assert seen and set(seen) == {decompress.HANDOVER_S}
    assert sys.getswitchinterval() == before
    with pytest.raises(InputError), decompress.prompt_handovers():
        raise InputError("bad input", "fix it")
    assert sys.getswitchinterval() == before


def test_member_paths_cannot_escape_the_folder(tmp_path) -> None:
    evil = "cifar-10-batches-py/data_batch_1/../../../../escaped"
    src = cifar_tar(tmp_path, data_batch_1=py_batch(2), test_batch=py_batch(2))
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        with tarfile.open(src) as good:
            for info in good.getmembers():
                tar.addfile(info, good.extractfile(info))
        info = tarfile.TarInfo(evil)
        info.size = len(py_batch(2))
        tar.addfile(info, io.BytesIO(py_batch(2)))
    result = ingest.ingest(str(tmp_path / "evil.tar.gz"), str(tmp_path / "a" / "b" / "work"), store=Store())
    assert [m.path for m in ingest.load_raw(Store(), result.raw_url).members] == [
        "batches.meta",
        "data_batch_1",
        "test_batch",
    ]
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))


def test_md5_mismatch(archives, tmp_path, capsys, quiet) -> None:
    code, _, err = run_ingest(capsys, str(archives["cifar10-python"]), str(tmp_path), "--md5", "0" * 32)
    one_error_line(code, err)
    assert err.startswith("error: md5 mismatch") and "expected 00000000" in err
    assert files_under(tmp_path) == []


def test_an_archive_that_changes_between_its_hash_and_its_landing(archives, tmp_path, capsys, quiet) -> None:
    """A folder holding another commit makes ingest hash the archive first (its sha256 names the folder); if
    the landing pass reads other bytes, that is one line and nothing of the new landing stays."""
    original, changing = archives["cifar10-python"], tmp_path / "changing.tar.gz"
    shutil.copy(archives["cifar10-binary"], changing)
    assert run_ingest(capsys, str(original), str(tmp_path / "w"))[0] == 0
    before = files_under(tmp_path / "w")
    real_hash = ingest.hash_stream

    def hash_then_change(stream, tick):  # type: ignore[no-untyped-def]
        digest = real_hash(stream, tick)
        shutil.copy(archives["cifar100-binary"], changing)  # rewritten in place after the pre-pass
        return digest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "hash_stream", hash_then_change)
        code, _, err = run_ingest(capsys, str(changing), str(tmp_path / "w"))
    assert "changed while it was read" in one_error_line(code, err)
    assert files_under(tmp_path / "w") == before


@pytest.mark.usefixtures("quiet")
def test_named_dataset_checks_the_published_md5(http_root, archives, tmp_path, capsys, monkeypatch) -> None:
    # A mirror serving something that is not the real CIFAR-10: the published md5 catches it.
    base, root = http_root
    shutil.copy(archives["cifar10-python"], root / "cifar-10-python.tar.gz")
    monkeypatch.setenv("CIFARFLOW_CIFAR_MIRROR", base)
    code, _, err = run_ingest(capsys, "cifar10", str(tmp_path / "w"))
    one_error_line(code, err)
    assert "md5 mismatch" in err and "c58f30108f718f92721af3b95e74349a" in err
    assert files_under(tmp_path / "w") == []


def test_no_network(tmp_path, capsys, quiet, monkeypatch, dead_endpoint) -> None:
    monkeypatch.setenv("CIFARFLOW_CIFAR_MIRROR", dead_endpoint + "/~kriz")
    code, _, err = run_ingest(capsys, "cifar10", str(tmp_path / "w"))
    one_error_line(code, err)
    assert err.startswith("error: cannot download cifar10 from http://127.0.0.1:")
    assert "--source PATH" in err and "cifarflow synth" in err
    assert files_under(tmp_path) == []


def test_unreachable_download_url(tmp_path, capsys, quiet, dead_endpoint) -> None:
    code, _, err = run_ingest(capsys, dead_endpoint + "/x.tar.gz", str(tmp_path))
    assert one_error_line(code, err) and "error: cannot download http://127.0.0.1:" in err
    assert files_under(tmp_path) == []


def test_missing_source(tmp_path, capsys, quiet) -> None:
    code, _, err = run_ingest(capsys, str(tmp_path / "nope.tar.gz"), str(tmp_path))
    assert one_error_line(code, err) and "does not exist" in err


def test_unreachable_bucket_endpoint(archives, capsys, quiet, s3_server, dead_endpoint) -> None:
    code, _, err = run_ingest(
        capsys, str(archives["cifar10-python"]), "s3://bucket/work", "--s3-endpoint", dead_endpoint
    )
    one_error_line(code, err)
    assert "cannot reach the storage endpoint" in err and "--s3-endpoint" in err


def test_missing_bucket(archives, capsys, quiet, s3_server) -> None:
    code, _, err = run_ingest(
        capsys, str(archives["cifar10-python"]), "s3://no-such-bucket/w", "--s3-endpoint", s3_server.endpoint
    )
    assert one_error_line(code, err) and "does not exist" in err


def test_wrong_credentials(archives, capsys, quiet, s3_auth_server) -> None:
    code, _, err = run_ingest(
        capsys, str(archives["cifar10-python"]), "s3://bucket/w", "--s3-endpoint", s3_auth_server.endpoint
    )
    one_error_line(code, err)
    assert "access denied to s3://bucket/w" in err and "AWS_ACCESS_KEY_ID" in err


def test_bad_md5_argument(tmp_path) -> None:
    with pytest.raises(InputError, match="not an md5 sum"):
        ingest.ingest("cifar10", str(tmp_path), store=Store(StorageConfig()), md5="xyz")


# -- interruptions, full and read-only disks, odd paths ------------------------------------------------------


def tmp_files(root: Path) -> list[str]:
    """Temporary files a write left behind (``<name>.tmp-<uuid>``)."""
    return [f for f in files_under(root) if ".tmp-" in f]


def test_ctrl_c_is_one_line(archives, tmp_path, capsys, quiet, monkeypatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "land_records", interrupt)
    code, _, err = run_ingest(capsys, str(archives["cifar10-binary"]), str(tmp_path / "w"))
    assert code == 130
    assert err == "error: interrupted (fix: rerun the same command; finished work is reused)\n"


def test_sigterm_removes_the_spool_and_the_rerun_finishes(
    archives, tmp_path, capsys, quiet, monkeypatch
) -> None:
    spools: list[str] = []
    land = Landing.land

    def killed(self, member, data=None, local_path=None, index=None):  # type: ignore[no-untyped-def]
        if local_path is not None:  # a binary member spooled to local disk
            spools.append(os.path.dirname(local_path))
            os.kill(os.getpid(), signal.SIGTERM)
        return land(self, member, data, local_path, index)

    monkeypatch.setattr(Landing, "land", killed)
    dest = tmp_path / "w"
    code, _, err = run_ingest(capsys, str(archives["cifar10-binary"]), str(dest))
    assert code == 143
    assert err == "error: terminated by SIGTERM (fix: rerun the same command; finished work is reused)\n"
    assert spools and not os.path.exists(spools[0])
    monkeypatch.setattr(Landing, "land", land)
    assert run_ingest(capsys, str(archives["cifar10-binary"]), str(dest))[0] == 0
    assert tmp_files(dest) == []


def test_a_killed_runs_spool_and_temp_files_are_removed(archives, tmp_path, monkeypatch) -> None:
    """SIGKILL cannot be caught: the next run removes what the dead one left (its pid is gone)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "tmp" / f"cifarflow-ingest-{dead.pid}-x1"
    live = tmp_path / "tmp" / f"cifarflow-ingest-{os.getpid()}-x2"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "member").write_bytes(b"\0" * 1000)
    src, dest = archives["cifar10-binary"], tmp_path / "w"
    half = dest / "raw" / sha256_of(src)[:16] / "data_batch_1.bin.tmp-0123456789abcdef"
    half.parent.mkdir(parents=True)
    half.write_bytes(b"\0" * 1000)
    ingest.ingest(str(src), str(dest), store=Store())
    assert not stale.exists() and live.exists()
    assert tmp_files(dest) == []


def test_disk_full_then_resume(archives, tiny_fs, capsys, quiet) -> None:
    """A real ENOSPC (a 1 MiB tmpfs): one line, no temporary file; with room again the rerun finishes."""
    src = str(archives["cifar10-python"])
    code, _, err = run_ingest(capsys, src, str(tiny_fs.path / "w"))
    assert "error: no space left writing file://" in one_error_line(code, err)
    assert tmp_files(tiny_fs.path) == []
    tiny_fs.remount("size=64m")
    code, _, err = run_ingest(capsys, src, str(tiny_fs.path / "w"))
    assert code == 0, err
    assert check_raw(Store(), f"file://{tiny_fs.path}/w/raw", "cifar10-python") == {
        "train": TRAIN,
        "test": TEST,
    }
    assert tmp_files(tiny_fs.path) == []


def test_disk_full_while_copying_a_member(archives, tmp_path, capsys, quiet, monkeypatch) -> None:
    """ENOSPC half-way through a member's copy from the spool to another filesystem (where a tmpfs cannot be
    mounted): the same one line."""
    from fsspec.implementations.local import LocalFileSystem

    def full(self, path1: str, path2: str, **kwargs: object) -> None:
        Path(path2).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", path2)

    rename = os.replace

    def across_devices(src: str, dst: str) -> None:
        if SPOOL_PREFIX in src:  # the spool is on another filesystem: the rename fails, the copy runs
            raise OSError(errno.EXDEV, "Invalid cross-device link", src)
        rename(src, dst)

    monkeypatch.setattr(LocalFileSystem, "cp_file", full)
    monkeypatch.setattr(os, "replace", across_devices)
    code, _, err = run_ingest(capsys, str(archives["cifar10-binary"]), str(tmp_path / "w"))
    assert "error: no space left writing file://" in one_error_line(code, err)
    assert tmp_files(tmp_path / "w") == []


def test_read_only_destination(archives, tiny_fs, capsys, quiet) -> None:
    tiny_fs.remount("ro")
    code, _, err = run_ingest(capsys, str(archives["cifar10-python"]), str(tiny_fs.path / "w"))
    assert "is on a read-only file system" in one_error_line(code, err)


@pytest.mark.parametrize("under", ["", "sub"])
def test_destination_is_a_file(archives, tmp_path, capsys, quiet, under: str) -> None:
    (tmp_path / "file").write_bytes(b"x")
    dest = tmp_path / "file" / under if under else tmp_path / "file"
    code, _, err = run_ingest(capsys, str(archives["cifar10-python"]), str(dest))
    assert f"{tmp_path}/file is a file, not a folder" in one_error_line(code, err)
    assert (tmp_path / "file").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("source", "message"), [("", "--source is empty"), ("DIR", "is a folder, not an archive")]
)
def test_source_empty_or_a_folder(tmp_path, capsys, quiet, source: str, message: str) -> None:
    code, _, err = run_ingest(capsys, str(tmp_path) if source == "DIR" else source, str(tmp_path / "w"))
    assert message in one_error_line(code, err)
    assert files_under(tmp_path / "w") == []


@pytest.mark.parametrize("deleted", ["data_batch_2", f"{content_index.FOLDER}/data_batch_2"])
def test_a_deleted_member_is_landed_again(archives, tmp_path, deleted: str) -> None:
    """The fix preprocess gives for a missing raw member or content index ("re-run `cifarflow ingest`") must
    work."""
    src, dest = str(archives["cifar10-python"]), str(tmp_path / "w")
    first = ingest.ingest(src, dest, store=Store())
    index = ingest.load_raw(Store(), first.raw_url)
    (tmp_path / "w" / "raw" / index.folder / deleted).unlink()
    again = ingest.ingest(src, dest, store=Store())
    assert not again.reused and again.written == 1
    assert check_raw(Store(), first.raw_url, "cifar10-python") == {"train": TRAIN, "test": TEST}
    assert ingest.ingest(src, dest, store=Store()).reused


def test_gcs_without_network_is_one_line(archives, tmp_path, dead_endpoint) -> None:
    """gcsfs would retry six times with back-off (over a minute) and log a traceback for each attempt; the
    command, as a user runs it, says it in one line."""
    env = {**os.environ, "STORAGE_EMULATOR_HOST": dead_endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    source = str(archives["cifar10-python"])
    proc = subprocess.run(
        [sys.executable, "-m", "cifarflow", "ingest", "--source", source, "--dest", "gs://bucket/w"],
        env={k: v for k, v in env.items() if k != "CIFARFLOW_LOG_LEVEL"},
        capture_output=True,
        text=True,
        check=False,
    )
    error = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert proc.returncode == 2 and len(error) == 1, proc.stderr
    assert error[0].startswith("error: cannot reach the storage endpoint for gs://bucket/w (127.0.0.1:")
