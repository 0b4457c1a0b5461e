"""``cifarflow synth``: CIFAR's exact on-disk layouts, readable by cifar.py's decoders and by plain pickle."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from cifarflow.cli import main
from cifarflow.data import cifar, synth
from cifarflow.storage import Store

VARIANTS = [("python", 10), ("binary", 10), ("python", 100), ("binary", 100)]
EXPECTED = {
    "cifar10-python": [
        "batches.meta",
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "readme.html",
    ],
    "cifar10-binary": [
        "batches.meta.txt",
        *(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test_batch.bin",
        "readme.html",
    ],
    "cifar100-python": ["meta", "train", "test"],
    "cifar100-binary": ["coarse_label_names.txt", "fine_label_names.txt", "train.bin", "test.bin"],
}


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize(("fmt", "classes"), VARIANTS)
def test_round_trip_through_decoders(tmp_path, fmt: str, classes: int) -> None:
    train, test = 230, 70
    url = synth.write_archive(
        str(tmp_path), train=train, test=test, fmt=fmt, classes=classes, seed=3, store=Store()
    )
    layout = cifar.LAYOUTS[f"cifar{classes}-{fmt}"]
    assert url == f"file://{tmp_path}/{synth.ARCHIVE_NAMES[layout.name]}"
    files = _members(url[len("file://") :])
    assert [n.split("/", 1)[1] for n in files] == EXPECTED[layout.name]
    assert all(n.startswith(layout.root + "/") for n in files)
    assert cifar.detect_layout(list(files)) == layout

    names = cifar.label_names(files[f"{layout.root}/{layout.meta}"], layout)
    assert len(names) == classes
    counts = {"train": 0, "test": 0}
    labels = []
    for name, data in files.items():
        split = layout.split_of(name.split("/", 1)[1])
        if split is None:
            continue
        decode = cifar.decode_python if fmt == "python" else cifar.decode_binary
        batch = decode(data, layout, name)
        assert batch.images.shape == (len(batch), cifar.IMAGE_BYTES) and batch.images.dtype == np.uint8
        counts[split] += len(batch)
        if split == "train":
            labels.append(batch.labels)
    assert counts == {"train": train, "test": test}
    # Balanced classes, like CIFAR's splits.
    per_class = np.bincount(np.concatenate(labels), minlength=classes)
    assert per_class.max() - per_class.min() <= 1


def test_python_pickles_look_like_the_originals(tmp_path) -> None:
    url = synth.write_archive(
        str(tmp_path), train=50, test=10, fmt="python", classes=10, seed=0, store=Store()
    )
    files = _members(url[len("file://") :])
    batch = files["cifar-10-batches-py/data_batch_1"]
    assert batch[:2] == b"\x80\x02"  # protocol 2
    # What every CIFAR tutorial does: plain pickle with encoding="bytes" gives bytes keys and a uint8 array.
    d = pickle.loads(batch, encoding="bytes")
    assert sorted(d) == [b"batch_label", b"data", b"filenames", b"labels"]
    assert d[b"batch_label"] == b"training batch 1 of 5"
    assert d[b"data"].shape == (10, 3072) and d[b"data"].dtype == np.uint8
    assert isinstance(d[b"labels"], list) and isinstance(d[b"filenames"][0], bytes)
    # encoding="latin1" (the other common recipe) reads the same pixels.
    assert np.array_equal(pickle.loads(batch, encoding="latin1")["data"], d[b"data"])
    meta = pickle.loads(files["cifar-10-batches-py/batches.meta"], encoding="bytes")
    assert meta[b"label_names"][0] == b"airplane" and meta[b"num_vis"] == 3072
    assert meta[b"num_cases_per_batch"] == 10000


def test_cifar100_labels_and_names(tmp_path) -> None:
    url = synth.write_archive(
        str(tmp_path), train=200, test=100, fmt="python", classes=100, seed=0, store=Store()
    )
    files = _members(url[len("file://") :])
    train = pickle.loads(files["cifar-100-python/train"], encoding="bytes")
    meta = pickle.loads(files["cifar-100-python/meta"], encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    fine, coarse = np.array(train[b"fine_labels"]), np.array(train[b"coarse_labels"])
    assert np.array_equal(coarse, synth.COARSE_OF_FINE[fine])
    names = [n.decode() for n in meta[b"fine_label_names"]]
    assert names[fine[0]] in synth.CIFAR100_GROUPS[meta[b"coarse_label_names"][coarse[0]].decode()]
    # The binary variant stores (coarse, fine) byte pairs.
    url = synth.write_archive(
        str(tmp_path), train=20, test=10, fmt="binary", classes=100, seed=0, store=Store()
    )
    recs = np.frombuffer(_members(url[len("file://") :])["cifar-100-binary/train.bin"], np.uint8).reshape(
        -1, 3074
    )
    assert np.array_equal(recs[:, 0], synth.COARSE_OF_FINE[recs[:, 1]])


def test_train_batches_scale_with_size() -> None:
    assert synth.train_batches(1) == 5
    assert synth.train_batches(50_000) == 5
    assert synth.train_batches(50_001) == 6
    assert synth.train_batches(500_000) == 50
    layout = cifar.LAYOUTS["cifar10-binary"]
    sizes = [m.rows for m in synth.members(layout, train=60_001, test=1, seed=0) if "data_batch" in m.name]
    assert len(sizes) == 7 and sum(sizes) == 60_001 and max(sizes) - min(sizes) <= 1 and max(sizes) <= 10_000


def test_deterministic_and_seeded(tmp_path) -> None:
    def digest(seed: int, name: str) -> str:
        out = str(tmp_path / name)
        synth.write_archive(out, train=40, test=10, fmt="binary", classes=10, seed=seed, store=Store())
        return hashlib.md5((tmp_path / name).read_bytes()).hexdigest()

    assert digest(1, "a.tar.gz") == digest(1, "b.tar.gz")
    assert digest(1, "a.tar.gz") != digest(2, "c.tar.gz")


def test_classes_are_distinguishable(tmp_path) -> None:
    # Orientation is the class cue: the mean power spectrum differs between classes far more than within one.
    table = synth.ClassTable.for_classes(10)
    rng = np.random.default_rng(0)
    spectra = []
    for c in range(10):
        imgs = (
            synth.render(np.full(200, c), table, rng).reshape(200, 3, 32, 32).astype(np.float32).mean(axis=1)
        )
        power = np.abs(np.fft.fft2(imgs - imgs.mean(axis=(1, 2), keepdims=True))) ** 2
        spectra.append(power.reshape(2, 100, -1).mean(axis=1))  # two halves of each class
    within = np.mean([np.linalg.norm(s[0] - s[1]) for s in spectra])
    between = np.mean(
        [np.linalg.norm(spectra[a][0] - spectra[b][1]) for a in range(10) for b in range(10) if a != b]
    )
    assert between > 3 * within


def test_writes_to_a_bucket(s3_server, s3_bucket) -> None:
    store = s3_server.store()
    url = synth.write_archive(
        s3_bucket + "/in", train=20, test=10, fmt="python", classes=10, seed=0, store=store
    )
    assert url == f"{s3_bucket}/in/cifar-10-python.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(url)), mode="r:gz") as tar:
        assert "cifar-10-batches-py/test_batch" in tar.getnames()


def test_cli(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "x.tar.gz"),
                "--train",
                "10",
                "--test",
                "5",
                "--format",
                "binary",
            ]
        )
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"file://{tmp_path}/x.tar.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar.gz"]  # no temporary files left


def test_bad_arguments_fail_with_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path), "--classes", "7"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: --classes 7 is not a CIFAR variant (fix: use --classes 10 or --classes 100)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_is_typers_message_and_exit_2(tmp_path, capsys) -> None:
    """typer vendors click: its usage errors are caught by their own class (cifarflow.cli), not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path), "--train", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Invalid value for '--train'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def synth_error(capsys: pytest.CaptureFixture[str], out: str, train: str = "10") -> str:
    """Run ``cifarflow synth`` that must fail; returns its one error line (the bad-input contract)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", out, "--train", train, "--test", "5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "(fix: " in err
    return err


@pytest.mark.parametrize("out", ["file", "file/x.tar.gz"])
def test_destination_under_a_regular_file(tmp_path, capsys, monkeypatch, out: str) -> None:
    monkeypatch.setenv("CIFARFLOW_LOG_LEVEL", "ERROR")
    (tmp_path / "file").write_bytes(b"x")
    assert f"{tmp_path}/file is a file, not a folder" in synth_error(capsys, str(tmp_path / out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_disk_full_and_read_only(tiny_fs, capsys, monkeypatch) -> None:
    """A real ENOSPC and EROFS (a 1 MiB tmpfs): one line each, and no temporary file left."""
    monkeypatch.setenv("CIFARFLOW_LOG_LEVEL", "ERROR")
    assert "no space left writing file://" in synth_error(capsys, str(tiny_fs.path), train="2000")
    assert list(tiny_fs.path.iterdir()) == []
    tiny_fs.remount("ro")
    assert "read-only file system" in synth_error(capsys, str(tiny_fs.path))
