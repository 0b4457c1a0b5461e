"""data/synth_folders.py: synthetic image folders that folders.py reads as the layout they claim, images.py
decodes, a linear model learns (and colour alone does not), byte-identical by seed, as folders or archives, on
a local disk and through the S3 API."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cifarflow.data import folders, images, synth_folders
from cifarflow.data.synth_folders import FolderSpec, class_names, write_image_folder
from cifarflow.errors import ConflictError, InputError, StorageError
from cifarflow.storage import Store, join


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write(out: Path | str, **kwargs: Any) -> str:
    args: dict[str, Any] = {"classes": 4, "train": 16, "test": 8, "size": 24, "seed": 3, "store": Store()}
    return write_image_folder(str(out), **{**args, **kwargs})


def test_split_folder_is_the_layout_it_claims(tmp_path: Path) -> None:
    url = write(tmp_path / "ds")
    assert url == f"file://{tmp_path / 'ds'}"
    layout, stream = folders.scan(lambda: folders.store_listing(Store(), url))
    assert (layout.kind, layout.classes, layout.skipped) == ("split", class_names(4), {})
    assert layout.train_counts == (4, 4, 4, 4) and layout.test_counts == (2, 2, 2, 2)
    found = list(stream)
    assert {Path(e.key).suffix for e in found} == {".png", ".jpg"}  # mixed formats
    for entry in found:
        data = (tmp_path / "ds" / entry.path).read_bytes()
        assert images.probe(data)[:2] == (24, 24)
        assert images.decode(data).shape == (24, 24, 3)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    write(tmp_path / "a")
    write(tmp_path / "b")
    write(tmp_path / "c", seed=4)
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")
    assert read_tree(tmp_path / "a") != read_tree(tmp_path / "c")


def test_flat_layout_and_varied_sizes(tmp_path: Path) -> None:
    url = write(tmp_path / "flat", layout="flat", vary=0.5, formats=("png", "jpeg", "bmp", "webp"))
    layout = folders.survey(folders.store_listing(Store(), url))
    assert layout.kind == "flat" and not layout.has_test and layout.train_counts == (6, 6, 6, 6)
    sizes = {images.probe(data)[:2] for data in read_tree(tmp_path / "flat").values()}
    assert len(sizes) > 5 and all(12 <= w <= 36 and 12 <= h <= 36 for w, h in sizes)
    assert {Path(p).suffix for p in read_tree(tmp_path / "flat")} == {".png", ".jpg", ".bmp", ".webp"}


def test_learnable_but_not_by_colour_alone() -> None:
    def load(train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(synth_folders.images(FolderSpec(classes=10, train=train, test=0, size=32, seed=seed)))
        x = np.stack([images.decode(data, 16) for _, data in pairs]).astype(np.float32) / 255
        y = np.array([class_names(10).index(rel.split("/")[1]) for rel, _ in pairs])
        return x, y

    (x_train, y_train), (x_test, y_test) = load(800, 1), load(200, 2)

    def accuracy(features: np.ndarray, held_out: np.ndarray) -> float:
        model = LogisticRegression(max_iter=200, tol=1e-3).fit(features, y_train)
        return float(model.score(held_out, y_test))

    on_pixels = accuracy(x_train.reshape(800, -1), x_test.reshape(200, -1))
    on_colour = accuracy(x_train.mean(axis=(1, 2)), x_test.mean(axis=(1, 2)))
    assert on_pixels > 0.6, on_pixels  # chance is 0.1
    assert on_colour < 0.5, on_colour  # pairs of classes share a hue: the shape must be learnt


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archives_have_one_top_level_folder_and_fixed_bytes(tmp_path: Path, kind: str) -> None:
    name = f"shapes-24.{kind}"
    url = write(tmp_path / name, archive=kind)
    again = write(tmp_path / "again" / name, archive=kind)
    first, second = Path(url[len("file://") :]).read_bytes(), Path(again[len("file://") :]).read_bytes()
    assert first == second
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(first)) as zf:
            members: Sequence[tarfile.TarInfo | zipfile.ZipInfo] = zf.infolist()
    else:
        with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
            members = tar.getmembers()
    names = [m.filename if isinstance(m, zipfile.ZipInfo) else m.name for m in members]
    assert all(n.startswith("shapes-24/") for n in names) and len(names) == 24
    layout = folders.survey(folders.archive_listing(members))
    assert layout.root == ("shapes-24",) and layout.kind == "split" and layout.images == 24
    assert all(folders.is_regular(m) for m in members)


def test_into_a_bucket_as_a_folder_and_an_archive(s3_server, s3_bucket: str) -> None:
    store = s3_server.store()
    url = write_image_folder(
        join(s3_bucket, "in/shapes"), classes=3, train=6, test=3, size=16, seed=1, store=store
    )
    layout = folders.survey(folders.store_listing(store, url))
    assert layout.classes == class_names(3) and layout.images == 9
    archive = write_image_folder(
        join(s3_bucket, "in/shapes.tar.gz"),
        classes=3,
        train=6,
        test=0,
        size=16,
        seed=1,
        store=store,
        archive="tar.gz",
    )
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(archive)), mode="r:gz") as tar:
        assert folders.survey(folders.archive_listing(tar.getmembers())).root == ("shapes",)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"classes": 1}, "at least 2"),
        ({"train": 3}, "leaves a class without images"),
        ({"size": 4}, "under 8 pixels"),
        ({"formats": ("gif",)}, "formats ['gif']"),
        ({"vary": 1.0}, "outside [0, 1)"),
        ({"archive": "zip"}, "does not end with .zip"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(InputError) as info:
        write(tmp_path / "out", **kwargs)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_an_existing_destination_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "ds")
    before = read_tree(tmp_path / "ds")
    with pytest.raises(ConflictError):
        write(tmp_path / "ds", seed=9)
    assert read_tree(tmp_path / "ds") == before
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty")  # an empty folder is no conflict


def test_a_full_disk_leaves_nothing(tiny_fs) -> None:
    for kwargs in ({}, {"archive": "tar.gz"}):
        out = tiny_fs.path / ("big.tar.gz" if kwargs else "big")
        with pytest.raises(StorageError):
            write(out, train=400, test=0, size=64, formats=("png",), **kwargs)
        assert list(tiny_fs.path.iterdir()) == []
