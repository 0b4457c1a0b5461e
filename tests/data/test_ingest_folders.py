"""``cifarflow ingest`` of class-per-folder image datasets: folders, tar.gz and zip archives, bucket prefixes;
idempotence, resume, repair, and one line for every bad layout."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cifarflow.data import ingest
from cifarflow.data.ingest import folder
from cifarflow.data.ingest.marker import ImageIndex, ImageRecord
from cifarflow.data.synth_folders import write_image_folder
from cifarflow.errors import InputError
from cifarflow.storage import Store

from .test_ingest import counting, files_under, one_error_line, quiet, run_ingest  # noqa: F401 (fixture)

CLASSES, TRAIN, TEST = 3, 30, 9


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (seed % 256, 7, 9)).save(buf, "PNG")
    return buf.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tar_gz(path: Path, files: dict[str, bytes | str]) -> Path:
    """A tar.gz of ``files``; a ``str`` value makes a symbolic link to it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def records(store: Store, raw_url: str) -> tuple[ImageIndex, list[ImageRecord]]:
    index = ingest.read_raw(store, raw_url)
    assert isinstance(index, ImageIndex) and index.kind == "images"
    return index, [r for batch in index.batches(store, raw_url) for r in batch]


def check_landed(store: Store, raw_url: str, source: dict[str, bytes]) -> ImageIndex:
    """Every record's file is landed byte for byte as in ``source`` (path relative to the dataset root)."""
    index, recs = records(store, raw_url)
    assert sorted(r.path for r in recs) == sorted(source)
    for rec in recs:
        data = store.read_bytes(index.url(raw_url, rec))
        assert data == source[rec.path]
        assert (rec.bytes, rec.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        split_folder, name = (
            rec.path.split("/")[:2] if index.layout == "split" else (None, rec.path.split("/")[0])
        )
        assert index.classes[rec.label] == name
        assert rec.split == ("train" if split_folder in (None, "train") else "test")
    assert index.images == len(recs) == sum(index.train_counts) + sum(index.test_counts)
    return index


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic dataset as a folder, a tar.gz and a zip (one top-level folder in the archives)."""
    out = tmp_path_factory.mktemp("synthetic")
    kw = {"classes": CLASSES, "train": TRAIN, "test": TEST, "size": 12, "seed": 3, "store": Store()}
    write_image_folder(str(out / "ds"), **kw)  # type: ignore[arg-type]
    write_image_folder(str(out / "ds.tar.gz"), archive="tar.gz", **kw)  # type: ignore[arg-type]
    write_image_folder(str(out / "ds.zip"), archive="zip", **kw)  # type: ignore[arg-type]
    return {"folder": out / "ds", "tar.gz": out / "ds.tar.gz", "zip": out / "ds.zip"}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- happy paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "zip"])
def test_ingest_image_folder(synthetic, tmp_path, kind: str) -> None:
    store = Store()
    result = ingest.ingest(str(synthetic[kind]), str(tmp_path / "w"), store=store)
    assert result.layout == "images-split" and not result.reused and result.written == TRAIN + TEST
    index = check_landed(store, result.raw_url, tree(synthetic["folder"]))
    assert index.classes == ["0_disc", "1_square", "2_triangle"]
    assert (index.train_counts, index.test_counts, index.test_folder) == ([10, 10, 10], [3, 3, 3], "test")
    assert index.root == (
        "" if kind == "folder" else "ds"
    )  # the archive's one top-level folder is looked into
    assert (index.archive is None) == (kind == "folder") and (index.fingerprint is None) == (kind != "folder")
    # The dataset's identity does not depend on how it was packed.
    clean = ingest.ingest(str(synthetic["folder"]), str(tmp_path / "ref"), store=store)
    assert records(store, clean.raw_url)[0].checksum == index.checksum


def test_cifar_archives_still_read_as_cifar(tmp_path) -> None:
    index = ingest.read_raw(Store(), write_cifar(tmp_path))
    assert index.kind == "cifar"


def write_cifar(tmp_path: Path) -> str:
    from cifarflow.data import synth

    url = synth.write_archive(
        str(tmp_path), train=20, test=10, fmt="binary", classes=10, seed=0, store=Store()
    )
    return ingest.ingest(url, str(tmp_path / "w"), store=Store()).raw_url


def test_bucket_prefix(s3_server, s3_bucket, synthetic, tmp_path) -> None:
    store = s3_server.store()
    for rel, data in tree(synthetic["folder"]).items():
        store.write_bytes(f"{s3_bucket}/in/ds/{rel}", data)
    result = ingest.ingest(f"{s3_bucket}/in/ds", f"{s3_bucket}/work", store=store)
    assert result.raw_url == f"{s3_bucket}/work/raw" and result.written == TRAIN + TEST
    index = check_landed(store, result.raw_url, tree(synthetic["folder"]))
    local = ingest.ingest(str(synthetic["zip"]), str(tmp_path / "w"), store=Store())
    assert index.checksum == records(Store(), local.raw_url)[0].checksum
    assert ingest.ingest(f"{s3_bucket}/in/ds", f"{s3_bucket}/work", store=store).reused


def test_flat_layout(tmp_path) -> None:
    write_image_folder(
        str(tmp_path / "flat"), classes=2, train=6, test=4, size=8, seed=0, store=Store(), layout="flat"
    )
    result = ingest.ingest(str(tmp_path / "flat"), str(tmp_path / "w"), store=Store())
    assert result.layout == "images-flat"
    index = check_landed(Store(), result.raw_url, tree(tmp_path / "flat"))
    assert not index.has_test and index.test_counts == [] and index.train_counts == [5, 5]


def test_val_is_the_test_split(tmp_path) -> None:
    src = write_tree(
        tmp_path / "imagenette2-160",
        {
            f"{split}/{c}/{i}.png": png(i)
            for split in ("train", "val")
            for c in ("dog", "fish")
            for i in range(2)
        },
    )
    result = ingest.ingest(str(src), str(tmp_path / "w"), store=Store())
    index, recs = records(Store(), result.raw_url)
    assert index.test_folder == "val" and index.test_counts == [2, 2]
    assert {r.path for r in recs if r.split == "test"} == {
        f"val/{c}/{i}.png" for c in ("dog", "fish") for i in (0, 1)
    }


def test_unicode_and_spaces(tmp_path) -> None:
    files = {"train/chat noir é/ñ 1.png": png(1), "train/日本/x y.PNG": png(2), "test/日本/z.jpg.png": png(3)}
    src = write_tree(tmp_path / "src", files)
    for source in (src, tar_gz(tmp_path / "u.tar.gz", {f"top dir/{k}": v for k, v in files.items()})):
        result = ingest.ingest(str(source), str(tmp_path / f"w-{source.name}"), store=Store())
        index = check_landed(Store(), result.raw_url, files)
        assert index.classes == ["chat noir é", "日本"]


def test_non_images_are_counted_and_logged(tmp_path, caplog) -> None:
    files = {f"train/{c}/{i}.png": png(i) for c in ("a", "b") for i in range(2)}
    src = write_tree(
        tmp_path / "src", {**files, "README.md": b"x", "train/a/labels.csv": b"x", "train/.DS_Store": b"x"}
    )
    with caplog.at_level(logging.INFO, logger="cifarflow"):
        result = ingest.ingest(str(src), str(tmp_path / "w"), store=Store())
    index = check_landed(Store(), result.raw_url, files)
    assert index.skipped == {"hidden": 1, "not_image": 2}
    assert [r.message for r in caplog.records if "skipped: 1 hidden, 2 not_image" in r.message]


def test_links_are_not_landed(tmp_path) -> None:
    files = {f"train/{c}/{i}.png": png(i) for c in ("a", "b") for i in range(2)}
    outside = write_tree(tmp_path / "outside", {"secret.png": png(9)})
    src = write_tree(tmp_path / "src", files)
    os.symlink(outside / "secret.png", src / "train/a/link.png")
    os.symlink(outside, src / "train/b/linked-folder")
    archive = tar_gz(tmp_path / "l.tar.gz", {**files, "train/a/link.png": "../../../outside/secret.png"})
    for source in (src, archive):
        result = ingest.ingest(str(source), str(tmp_path / f"w-{source.name}"), store=Store())
        index = check_landed(Store(), result.raw_url, files)
        assert index.skipped["link"] >= 1
    assert not any(p.name == "secret.png" for p in tmp_path.glob("w-*/**/*"))


# -- idempotence, resume, repair -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_second_run_does_no_work(synthetic, tmp_path, monkeypatch, kind: str) -> None:
    store = Store()
    ingest.ingest(str(synthetic[kind]), str(tmp_path / "w"), store=store)
    writes = counting(store, monkeypatch)
    assert ingest.ingest(str(synthetic[kind]), str(tmp_path / "w"), store=store).reused
    assert writes == []


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "zip"])
def test_resume_after_a_kill(synthetic, tmp_path, monkeypatch, kind: str) -> None:
    """Shards of 4 images: "die" after 5 shards; the rerun lands only the rest, with the same marker."""
    monkeypatch.setattr(folder, "BATCH", 4)
    clean = ingest.ingest(str(synthetic[kind]), str(tmp_path / "clean"), store=Store())
    marker = (tmp_path / "clean" / "raw" / "_ingest.json").read_text()

    shards: list[str] = []
    original = folder.ImageLanding.write_shard

    def killed(self, path: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
        if len(shards) == 5:
            raise KeyboardInterrupt
        shards.append(path)
        original(self, path, data)

    monkeypatch.setattr(folder.ImageLanding, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest(str(synthetic[kind]), str(tmp_path / "w"), store=Store())
    raw = tmp_path / "w" / "raw"
    assert not (raw / "_ingest.json").exists()
    with pytest.raises(InputError, match="never finished"):
        ingest.read_raw(Store(), str(raw))
    monkeypatch.setattr(folder.ImageLanding, "write_shard", original)
    resumed = ingest.ingest(str(synthetic[kind]), str(tmp_path / "w"), store=Store())
    # 5 shards of 4 were committed; the 6th shard's 4 images had landed without their record: redone.
    assert resumed.written == clean.members - 5 * 4
    assert (raw / "_ingest.json").read_text() == marker.replace(clean.raw_url, resumed.raw_url)


def test_a_deleted_file_is_landed_again(synthetic, tmp_path) -> None:
    store = Store()
    first = ingest.ingest(str(synthetic["folder"]), str(tmp_path / "w"), store=store)
    index, recs = records(store, first.raw_url)
    os.remove(index.url(first.raw_url, recs[7])[len("file://") :])
    again = ingest.ingest(str(synthetic["folder"]), str(tmp_path / "w"), store=store)
    assert not again.reused and again.written == 1
    check_landed(store, first.raw_url, tree(synthetic["folder"]))
    assert ingest.ingest(str(synthetic["folder"]), str(tmp_path / "w"), store=store).reused


def test_a_changed_source_lands_in_its_own_folder(tmp_path) -> None:
    files = {f"train/{c}/{i}.png": png(i) for c in ("a", "b") for i in range(2)}
    src = write_tree(tmp_path / "src", files)
    first = ingest.ingest(str(src), str(tmp_path / "w"), store=Store())
    (src / "train/a/new.png").write_bytes(png(5))
    second = ingest.ingest(str(src), str(tmp_path / "w"), store=Store())
    assert not second.reused and second.identity != first.identity
    check_landed(Store(), second.raw_url, tree(src))


# -- bad layouts: one line, exit 2, nothing left under DEST --------------------------------------------------

TWO = {f"train/{c}/0.png": png(0) for c in ("a", "b")}

BAD_FOLDERS: dict[str, tuple[dict[str, bytes], str]] = {
    "empty folder": ({}, "is a folder, not an archive, and holds no class folders of images"),
    "no images": ({"train/a/x.txt": b"x"}, "no image files"),
    "one class": ({"train/a/0.png": png(0)}, "has 1 class folder(s) (a); a classifier needs two"),
    "an empty class folder": ({**TWO, "train/c/.DS_Store": b"x"}, "train/c/ holds no images"),
    "test without train": (
        {"test/a/0.png": png(0), "test/b/0.png": png(0)},
        "has a test/ or val/ split but no train/",
    ),
    "a test class not in train": (
        {**TWO, "test/z/0.png": png(0)},
        "test class 'z' (test/) has no train/ folder",
    ),
    "an empty test split": ({**TWO, "test/a/.keep": b""}, "test/a/ holds no images"),
}


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize("case", list(BAD_FOLDERS))
@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_bad_layout(case: str, kind: str, tmp_path, capsys) -> None:
    files, message = BAD_FOLDERS[case]
    src = write_tree(tmp_path / "src", files)
    src.mkdir(exist_ok=True)
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
            for rel, data in files.items():
                zf.writestr(f"src/{rel}", data)
        src = tmp_path / "src.zip"
    code, _, err = run_ingest(capsys, str(src), str(tmp_path / "w"))
    if kind == "zip" and case == "empty folder":
        message = "no image files"
    assert message in one_error_line(code, err)
    assert files_under(tmp_path / "w") == []


BAD_ARCHIVES: dict[str, tuple[dict[str, bytes | str], str]] = {
    "a ../ member": ({**TWO, "train/a/../../../escaped.png": png(1)}, "'..' climbs out of the root"),
    "an absolute member": ({**TWO, "/tmp/abs.png": png(1)}, "an absolute path"),
    "neither CIFAR nor class folders": (
        {"photos/cat.jpg": b"\xff"},
        "is not a CIFAR-10/100 archive (no cifar-10-batches-py/",
    ),
    "the same image twice": ({**TWO, "./train/a/0.png": png(0)}, "holds train/a/0.png twice"),
}


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_bad_archive(case: str, tmp_path, capsys) -> None:
    files, message = BAD_ARCHIVES[case]
    code, _, err = run_ingest(capsys, str(tar_gz(tmp_path / "bad.tar.gz", files)), str(tmp_path / "w"))
    assert message in one_error_line(code, err)
    assert files_under(tmp_path / "w") == []
    assert not (tmp_path / "escaped.png").exists()


@pytest.mark.usefixtures("quiet")
def test_max_bytes_bounds_the_images(synthetic, tmp_path, capsys) -> None:
    for kind in ("folder", "tar.gz", "zip"):
        code, _, err = run_ingest(capsys, str(synthetic[kind]), str(tmp_path / "w"), "--max-bytes", "5000")
        assert "over the --max-bytes limit of 5000" in one_error_line(code, err)
        assert files_under(tmp_path / "w") == []


@pytest.mark.usefixtures("quiet")
def test_dest_inside_the_source_folder(synthetic, tmp_path, capsys) -> None:
    src = write_tree(tmp_path / "src", TWO)
    code, _, err = run_ingest(capsys, str(src), str(src / "work"))
    assert "lies inside --source" in one_error_line(code, err)


def test_preprocess_reader_refuses_an_image_marker_as_cifar(tmp_path) -> None:
    result = ingest.ingest(str(write_tree(tmp_path / "src", TWO)), str(tmp_path / "w"), store=Store())
    with pytest.raises(InputError, match="holds an image folder"):
        ingest.load_raw(Store(), result.raw_url)
    marker = json.loads((tmp_path / "w" / "raw" / "_ingest.json").read_text())
    assert marker["format"] == "cifarflow.raw-images/v1" and marker["classes"] == ["a", "b"]


# -- cifarflow synth --format folder -------------------------------------------------------------------------


def test_synth_folder_cli_then_ingest(tmp_path, capsys) -> None:
    from .test_ingest import run_cli

    code, out, err = run_cli(
        capsys, "synth", "--format", "folder", "--out", str(tmp_path / "s.tar.gz"), "--archive", "tar.gz",
        "--train", "8", "--test", "4", "--classes", "4", "--image-size", "20",
    )  # fmt: skip
    assert code == 0, err and out.strip() == f"file://{tmp_path}/s.tar.gz"
    result = ingest.ingest(str(tmp_path / "s.tar.gz"), str(tmp_path / "w"), store=Store())
    index, recs = records(Store(), result.raw_url)
    assert len(index.classes) == 4 and len(recs) == 12
    assert Image.open(io.BytesIO(Store().read_bytes(index.url(result.raw_url, recs[0])))).size == (20, 20)


@pytest.mark.usefixtures("quiet")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--image-size", "16"), "--image-size is for --format folder"),
        (("--archive", "zip"), "--archive is for --format folder"),
        (("--format", "folder", "--classes", "1"), "--classes 1: a classifier needs at least 2"),
        (("--format", "folder", "--classes", "2", "--archive", "zip"), "does not end with .zip"),
    ],
)
def test_synth_folder_bad_options(tmp_path, capsys, args: tuple[str, ...], message: str) -> None:
    from .test_ingest import run_cli

    code, _, err = run_cli(capsys, "synth", "--out", str(tmp_path / "o"), "--train", "4", *args)
    assert message in one_error_line(code, err)
    assert not (tmp_path / "o").exists()


def test_checking_a_bucket_landing_lists_each_folder_once(
    s3_server, s3_bucket, synthetic, monkeypatch
) -> None:
    """An archive interleaves classes (train/0_disc, train/1_square, ...): the rerun's check of what landed
    must not list a folder again at every change of class."""
    store = s3_server.store()
    ingest.ingest(str(synthetic["tar.gz"]), f"{s3_bucket}/work", store=store)
    listed: list[str] = []
    original = folder.ImageLanding._list

    def counted(self, path: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
        listed.append(path)
        return original(self, path)

    monkeypatch.setattr(folder.ImageLanding, "_list", counted)
    assert ingest.ingest(str(synthetic["tar.gz"]), f"{s3_bucket}/work", store=store).reused
    assert sorted(listed) == sorted(
        {f"{s}/{c}" for s in ("train", "test") for c in ("0_disc", "1_square", "2_triangle")}
    )
