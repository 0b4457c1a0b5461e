"""data/folders.py: the class-per-folder layout over real folders (local and S3), real tar/zip archives, and
plain path listings."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from cifarflow.data import folders
from cifarflow.data.folders import Entry, Layout, Listed, Skip, UnsafePath, scan, store_listing, survey
from cifarflow.errors import InputError
from cifarflow.storage import Store, join


def image_bytes(name: str) -> bytes:
    """A real 4x4 image in the format its extension names."""
    fmt = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(Path(name).suffix.lower(), "JPEG")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def write_tree(root: Path, paths: list[str]) -> Path:
    """Real files: images (by extension) hold a Pillow-encoded image, others some text; ``x/`` is a folder."""
    for rel in paths:
        target = root / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        is_image = rel.lower().endswith(folders.IMAGE_EXTENSIONS)
        target.write_bytes(image_bytes(rel) if is_image else b"not an image\n")
    return root


def local(root: Path) -> list[Listed]:
    return list(store_listing(Store(), str(root)))


def by_key(entries: Iterator[Entry]) -> dict[str, Entry]:
    return {e.key: e for e in entries}


SPLIT_TREE = [
    "train/cat/a.jpg",
    "train/cat/b.PNG",
    "train/dog/c.JPEG",
    "train/dog/d.bmp",
    "train/dog/e.webp",
    "test/cat/f.jpg",
    "test/dog/g.png",
    "README.md",
    "train/dog/labels.csv",
]


def test_split_layout_from_a_local_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ds", SPLIT_TREE)
    layout, stream = scan(lambda: local(root))
    assert (layout.kind, layout.root, layout.classes, layout.test_folder) == (
        "split",
        (),
        ("cat", "dog"),
        "test",
    )
    assert layout.train_counts == (2, 3) and layout.test_counts == (1, 1) and layout.images == 7
    assert layout.skipped == {"not_image": 2}
    found = by_key(stream)
    assert set(found) == {
        p for p in SPLIT_TREE if p.startswith(("train/", "test/")) and not p.endswith(".csv")
    }
    assert found["train/dog/e.webp"].label == 1 and found["train/dog/e.webp"].split == "train"
    assert found["test/cat/f.jpg"] == Entry(
        "test/cat/f.jpg", "test/cat/f.jpg", 0, "test", len(image_bytes("f.jpg"))
    )
    assert layout.size == sum(e.size or 0 for e in found.values())


def test_val_is_the_test_split_and_is_unused_beside_test() -> None:
    val = survey(["train/a/1.jpg", "train/b/2.jpg", "val/a/3.jpg"])
    assert val.test_folder == "val" and val.test_counts == (1, 0)
    assert val.entry("val/a/3.jpg") == Entry("val/a/3.jpg", "val/a/3.jpg", 0, "test", None)

    both = survey(["train/a/1.jpg", "train/b/2.jpg", "test/b/3.jpg", "val/a/4.jpg", "val/b/5.jpg"])
    assert both.test_folder == "test" and both.test_counts == (0, 1)
    assert both.skipped == {"unused_split": 2}
    assert both.classify("val/a/4.jpg") is Skip.UNUSED_SPLIT


def test_flat_layout_has_no_test_split(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "flat", ["cat/1.jpg", "cat/2.png", "dog/3.jpg", "loose.jpg", "LICENSE"])
    layout, stream = scan(lambda: local(root))
    assert (layout.kind, layout.has_test, layout.classes) == ("flat", False, ("cat", "dog"))
    assert layout.train_counts == (2, 1) and layout.test_counts == ()
    assert layout.skipped == {"not_image": 1, "outside_class_folder": 1}
    assert {(e.key, e.label, e.split) for e in stream} == {
        ("cat/1.jpg", 0, "train"),
        ("cat/2.png", 0, "train"),
        ("dog/3.jpg", 1, "train"),
    }


def _tar_gz(tree: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tree, arcname=top)
    return buf.getvalue()


def _zip(tree: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(tree)}")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_one_top_level_folder_in_an_archive_is_read_from_inside(tmp_path: Path, kind: str) -> None:
    tree = write_tree(tmp_path / "tree", [*SPLIT_TREE, "val/cat/h.jpg"])
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(_zip(tree, "imagenette2-160"))) as zf:
            members: list[tarfile.TarInfo | zipfile.ZipInfo] = list(zf.infolist())
    else:
        with tarfile.open(fileobj=io.BytesIO(_tar_gz(tree, "imagenette2-160")), mode="r:gz") as tar:
            members = list(tar.getmembers())
    layout, stream = scan(lambda: folders.archive_listing(members))
    assert layout.root == ("imagenette2-160",) and layout.kind == "split" and layout.classes == ("cat", "dog")
    found = by_key(stream)
    assert found["train/cat/a.jpg"].path == "imagenette2-160/train/cat/a.jpg"
    assert found["test/dog/g.png"].split == "test"
    assert layout.skipped == {"not_image": 2, "unused_split": 1}


def test_wrapping_folders_are_descended_until_a_split_or_images() -> None:
    deep = survey(["./data/set/train/a/1.jpg", "./data/set/train/b/2.jpg", "data/notes.txt"])
    assert deep.root == ("data", "set") and deep.kind == "split"
    wrapped_flat = survey(["pets/cat/1.jpg", "pets/dog/2.jpg"])
    assert wrapped_flat.root == ("pets",) and wrapped_flat.kind == "flat"
    # A lone train/ folder is the split, not a wrapper.
    only_train = survey(["train/a/1.jpg", "train/b/2.jpg"])
    assert only_train.root == () and only_train.kind == "split" and not only_train.has_test


def test_nested_hidden_and_stray_files(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "ds",
        [
            "train/cat/1.jpg",
            "train/cat/extra/deeper/2.jpg",  # below a class folder: the class's
            "train/dog/3.jpg",
            "train/dog/.DS_Store",
            "train/dog/._3.jpg",  # AppleDouble resource fork
            "train/.cache/4.jpg",
            "__MACOSX/train/cat/._1.jpg",
            ".git/config",
            "train/5.jpg",  # in the split folder, not in a class folder
            "extras/cat/6.jpg",  # a top-level folder that is not a split
            "test/cat/7.jpg",
        ],
    )
    layout, stream = scan(lambda: local(root))
    assert layout.classes == ("cat", "dog") and layout.train_counts == (2, 1) and layout.test_counts == (1, 0)
    assert layout.skipped == {"hidden": 5, "outside_class_folder": 2}
    found = by_key(stream)
    assert found["train/cat/extra/deeper/2.jpg"].label == 0
    assert layout.classify("train/dog/._3.jpg") is Skip.HIDDEN
    assert layout.classify("extras/cat/6.jpg") is Skip.OUTSIDE
    assert layout.classify("train/cat/extra/") is Skip.FOLDER


def test_unicode_and_spaces_in_names(tmp_path: Path) -> None:
    names = ["train/chat noir/été 1.jpg", "train/狗/照片 2.png", "train/Ärger/x.jpg", "test/狗/ü.webp"]
    root = write_tree(tmp_path / "données à voir", names)
    layout, stream = scan(lambda: local(root))
    assert layout.classes == tuple(sorted(["chat noir", "狗", "Ärger"]))
    found = by_key(stream)
    assert set(found) == set(names)
    assert layout.classes[found["test/狗/ü.webp"].label] == "狗"
    with open(
        root / found["train/chat noir/été 1.jpg"].path, "rb"
    ) as handle:  # the listed path reads the file
        assert handle.read() == image_bytes("x.jpg")


@pytest.mark.parametrize(
    "bad",
    ["../escape.jpg", "train/../../escape.jpg", "/etc/passwd.jpg", "C:\\data\\x.jpg", "train\\..\\..\\x.jpg"],
)
def test_paths_leaving_the_root_are_refused(bad: str) -> None:
    with pytest.raises(UnsafePath) as info:
        survey(["train/a/1.jpg", "train/b/2.jpg", bad])
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)


def test_dot_segments_and_backslashes_inside_the_root_are_fine() -> None:
    layout = survey(["./train/a/1.jpg", "train//b/./2.jpg", "train\\b\\3.jpg"])
    assert layout.train_counts == (1, 2)
    assert layout.entry("train\\b\\3.jpg") == Entry("train\\b\\3.jpg", "train/b/3.jpg", 1, "train", None)


def test_links_are_flagged_and_not_followed(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ds", ["train/a/1.jpg", "train/b/2.jpg"])
    outside = write_tree(tmp_path / "outside", ["secret/3.jpg", "4.jpg"])
    os.symlink(outside / "4.jpg", root / "train" / "a" / "link.jpg")
    os.symlink(outside / "secret", root / "train" / "c")  # a linked "class folder"
    listed = local(root)
    assert {x.path for x in listed if x.link} == {"train/a/link.jpg", "train/c"}
    assert not any("secret" in x.path or x.path.startswith("train/c/") for x in listed)
    layout = survey(listed)
    assert layout.classes == ("a", "b") and layout.skipped == {"link": 2}


def test_archive_links_and_devices_are_flagged() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ["t/a/1.jpg", "t/b/2.jpg"]:
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
        for name, kind in [
            ("t/a/s.jpg", tarfile.SYMTYPE),
            ("t/a/h.jpg", tarfile.LNKTYPE),
            ("t/a/d.jpg", tarfile.CHRTYPE),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            tar.addfile(info)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        listed = list(folders.archive_listing(tar.getmembers()))
    assert {x.path for x in listed if x.link} == {"t/a/s.jpg", "t/a/h.jpg", "t/a/d.jpg"}

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        link = zipfile.ZipInfo("z/a/link.jpg")
        link.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(link, "/etc/passwd")
        zf.writestr("z/a/1.jpg", b"x")  # permission bits but no file-type bits: a plain file
    with zipfile.ZipFile(io.BytesIO(zbuf.getvalue())) as zf:
        assert [(x.path, x.link) for x in folders.archive_listing(zf.infolist())] == [
            ("z/a/link.jpg", True),
            ("z/a/1.jpg", False),
        ]


@pytest.mark.parametrize(
    ("paths", "says"),
    [
        (["README.md", "data.csv"], "no image files"),
        (["test/a/1.jpg", "test/b/2.jpg"], "no train/"),
        (["cats/1.jpg", "cats/2.jpg"], "1 class folder(s) (cats)"),
        (
            ["train/a/1.jpg", "train/b/2.jpg", "train/c/", "train/d/notes.txt"],
            "class folder train/c/ holds no images",
        ),
        (["train/a/1.jpg", "train/b/2.jpg", "train/c/.DS_Store"], "class folder train/c/ holds no images"),
        (["train/a/1.jpg", "train/b/2.jpg", "test/"], "the test split test/ holds no images"),
        (["train/a/1.jpg", "train/b/2.jpg", "test/a/"], "class folder test/a/ holds no images"),
        (["train/a/1.jpg", "train/b/2.jpg", "val/z/3.jpg"], "test class 'z' (val/) has no train/ folder"),
        (["a/1.jpg", "b/2.jpg", "docs/README.md"], "class folder docs/ holds no images"),
    ],
)
def test_bad_layouts_are_one_line_input_errors(paths: list[str], says: str) -> None:
    with pytest.raises(InputError) as info:
        survey(paths)
    message = str(info.value)
    assert says in message and "\n" not in message and info.value.fix


def test_empty_local_class_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "ds", ["train/a/1.jpg", "train/b/2.jpg", "train/empty/"])
    with pytest.raises(InputError, match="train/empty/ holds no images"):
        survey(local(root))


def test_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a folder"):
        local(tmp_path / "file.jpg")


def test_a_large_listing_streams_through_two_passes() -> None:
    """200 000 files in 200 folders: the survey keeps per-folder tallies only, and each pass is a generator."""
    passes = []

    def listing() -> Iterator[str]:
        passes.append(1)
        for i in range(200_000):
            yield f"root/train/c{i % 200:03d}/img {i}.jpg"

    layout, stream = scan(listing)
    assert layout.root == ("root",) and len(layout.classes) == 200 and layout.size is None
    count = sum(1 for _ in stream)
    assert count == 200_000 and len(passes) == 2


def test_a_class_that_appears_between_passes_is_refused() -> None:
    layout = survey(["train/a/1.jpg", "train/b/2.jpg"])
    assert isinstance(layout, Layout)
    assert layout.entry("train/b/2.jpg") == layout.entry(Listed("train/b/2.jpg", None))
    with pytest.raises(InputError, match=r"'zz' of 'train/zz/9\.jpg' was not there"):
        layout.entry("train/zz/9.jpg")


def test_s3_prefix(s3_server, s3_bucket: str) -> None:
    store = s3_server.store()
    prefix = join(s3_bucket, "sets/pets")
    for rel in ["pets/train/cat/1.jpg", "pets/train/dog/2.png", "pets/test/dog/3.jpg", "pets/notes.txt"]:
        store.write_bytes(join(prefix, rel), image_bytes(rel))
    layout, stream = scan(lambda: store_listing(store, prefix))
    assert layout.root == ("pets",) and layout.classes == ("cat", "dog") and layout.test_counts == (0, 1)
    found = by_key(stream)
    assert found["train/dog/2.png"].size == len(image_bytes("2.png"))
    assert store.read_bytes(join(prefix, found["test/dog/3.jpg"].path)) == image_bytes("3.jpg")
