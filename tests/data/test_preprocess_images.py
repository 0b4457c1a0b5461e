"""The Spark job over image folders, with real files: synth_folders writes them, ingest lands them, preprocess runs
on Spark local (the module's session) and the shards are read back."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from cifarflow.data import manifest as mf
from cifarflow.data import preprocess as pre
from cifarflow.data.ingest import ingest
from cifarflow.data.synth_folders import write_image_folder
from cifarflow.errors import InputError
from cifarflow.storage import Store

from .test_preprocess import assert_one_error_line, run_cli, spark  # noqa: F401 (the module-scoped session, via usefixtures)

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17+ (make check-java)"),
    pytest.mark.usefixtures("spark"),
]

STORE = Store()


def folder(root: Path, **kw: Any) -> Path:
    spec = {"classes": 3, "train": 24, "test": 9, "size": 32, "seed": 0, **kw}
    write_image_folder(str(root), store=STORE, **spec)
    return root


def landed(source: Path, tmp_path: Path) -> str:
    return ingest(str(source), str(tmp_path / "bucket"), store=STORE).raw_url


def images_of(name: str, root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name.endswith(name))


def read_rows(dataset: str) -> dict[str, list[tuple[str, int, bytes]]]:
    manifest, base = mf.load(STORE, dataset)
    out: dict[str, list[tuple[str, int, bytes]]] = {}
    for split in mf.SPLITS:
        rows = out.setdefault(split, [])
        for entry in manifest.files(split):
            table = pq.read_table(io.BytesIO(mf.read_checked(STORE, base, entry)))
            rows += zip(*(table.column(c).to_pylist() for c in ("id", "label", "image")), strict=True)
    return out


def test_split_layout_end_to_end(tmp_path: Path) -> None:
    """Broken files skipped and listed, a train duplicate and a train copy of a test image dropped, the rest
    split and stored at the images' own size with the folder names as classes."""
    root = folder(tmp_path / "src")
    disc = images_of("disc", root / "train")
    (disc[0].parent / "truncated.png").write_bytes(disc[0].read_bytes()[:60])
    (disc[0].parent / "empty.jpg").write_bytes(b"")
    shutil.copy(disc[1], disc[1].parent / f"again{disc[1].suffix}")
    test_img = images_of("disc", root / "test")[0]
    shutil.copy(test_img, disc[0].parent / f"leak{test_img.suffix}")
    raw = landed(root, tmp_path)

    result = pre.preprocess(raw, str(tmp_path / "ds"), store=STORE)

    manifest, base = mf.load(STORE, result.dataset_url)
    stats = mf.load_stats(STORE, manifest, base)
    assert manifest.class_names == ["0_disc", "1_square", "2_triangle"]
    assert (manifest.image.height, manifest.image.width, manifest.image.channels) == (32, 32, 3)
    assert manifest.image.encoding == "raw"
    assert stats.skipped is not None and stats.skipped.undecodable == 2
    assert stats.skipped.paths == ["train/0_disc/empty.jpg", "train/0_disc/truncated.png"]
    assert stats.duplicates == {"train_duplicates": 1, "train_in_test": 1, "test_duplicates": 0}
    rows = read_rows(result.dataset_url)
    assert len(rows["test"]) == 9 and len(rows["train"]) + len(rows["val"]) == 24
    assert len(rows["val"]) == 3  # round(8 * 0.1) = 1 per class
    assert all(len(image) == 32 * 32 * 3 for split in rows.values() for _, _, image in split)
    ids = [row_id for split in rows.values() for row_id, _, _ in split]
    assert len(set(ids)) == len(ids)
    assert manifest.parameters["image_size"] is None and manifest.parameters["layout"] == "images/split"
    # Rerun: the same id, nothing to do.
    again = pre.preprocess(raw, str(tmp_path / "ds"), store=STORE)
    assert again.reused and again.dataset_id == result.dataset_id


def test_flat_layout_carves_a_stratified_test_split(tmp_path: Path) -> None:
    raw = landed(folder(tmp_path / "src", train=45, test=0, layout="flat"), tmp_path)
    result = pre.preprocess(raw, str(tmp_path / "ds"), seed=3, store=STORE)
    manifest, base = mf.load(STORE, result.dataset_url)
    stats = mf.load_stats(STORE, manifest, base)
    assert stats.counts["test"] == [3, 3, 3]  # round(15 * 0.2) per class
    assert stats.counts["val"] == [1, 1, 1]  # round(12 * 0.1)
    assert sum(stats.counts["train"]) == 45 - 9 - 3
    assert manifest.parameters["test_fraction"] == 0.2
    # By content: another seed carves another test split.
    other = pre.preprocess(raw, str(tmp_path / "ds"), seed=4, store=STORE)
    tests = [{i for i, _, _ in read_rows(r.dataset_url)["test"]} for r in (result, other)]
    assert tests[0] != tests[1]


def test_mixed_sizes_need_image_size(tmp_path: Path, capsys: Any) -> None:
    raw = landed(folder(tmp_path / "src", size=40, vary=0.3), tmp_path)
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(tmp_path / "ds")], capsys)
    assert_one_error_line(code, err, "the images have different sizes", "--image-size")
    assert not list((tmp_path / "ds").glob("*/_manifest.json"))

    result = pre.preprocess(raw, str(tmp_path / "ds"), image_size=48, store=STORE)
    manifest, _ = mf.load(STORE, result.dataset_url)
    assert (manifest.image.height, manifest.image.width) == (48, 48)
    assert manifest.parameters["image_size"] == 48
    rows = read_rows(result.dataset_url)
    assert all(len(image) == 48 * 48 * 3 for split in rows.values() for _, _, image in split)


def test_strict_makes_a_broken_file_one_line(tmp_path: Path, capsys: Any) -> None:
    root = folder(tmp_path / "src")
    (root / "train" / "1_square" / "bad.jpg").write_bytes(b"not a jpeg at all")
    raw = landed(root, tmp_path)
    with pytest.raises(InputError, match=r"bad\.jpg: not a decodable"):
        pre.preprocess(raw, str(tmp_path / "ds"), strict=True, store=STORE)
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(tmp_path / "ds"), "--strict"], capsys)
    assert_one_error_line(code, err, "train/1_square/bad.jpg", "--strict")
    assert not list((tmp_path / "ds").iterdir())


@pytest.mark.parametrize(
    ("broken", "needle"),
    [("all", "no image could be decoded"), ("class", "class '1_square' has no decodable train images")],
)
def test_every_image_or_a_class_broken_is_one_line(
    tmp_path: Path, capsys: Any, broken: str, needle: str
) -> None:
    root = folder(tmp_path / "src", train=6, test=3)
    victims = images_of("", root) if broken == "all" else images_of("square", root / "train")
    for path in victims:
        path.write_bytes(b"\x89PNG broken")
    raw = landed(root, tmp_path)
    code, _, err = run_cli(["preprocess", "--raw", raw, "--out", str(tmp_path / "ds")], capsys)
    assert_one_error_line(code, err, needle)


def test_cifar_refuses_image_options(tmp_path: Path) -> None:
    from cifarflow.data.synth import write_archive

    archive = write_archive(
        str(tmp_path / "c"), train=20, test=10, fmt="python", classes=10, seed=0, store=STORE
    )
    raw = landed(Path(archive.removeprefix("file://")), tmp_path)
    with pytest.raises(InputError, match="for image folders"):
        pre.preprocess(raw, str(tmp_path / "ds"), image_size=48, store=STORE)


def test_the_dataset_id_covers_the_image_size(tmp_path: Path) -> None:
    raw = landed(folder(tmp_path / "src", train=6, test=3), tmp_path)
    source = pre.read_source(STORE, raw)
    ids = {mf.dataset_id(source.checksum, pre.parameters(source, 0.1, 0, size)) for size in (None, 32, 48)}
    assert len(ids) == 3


def cifarflow(*args: str) -> dict[str, str]:
    """``cifarflow ARGS`` in a fresh process (TensorFlow stays out of this one); its ``key: value`` lines."""
    env = {**os.environ, "CIFARFLOW_SPARK_UI": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "cifarflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)


@pytest.mark.slow
def test_the_trainer_reads_a_48px_image_dataset(tmp_path: Path) -> None:
    raw = landed(folder(tmp_path / "src", train=30, test=6, size=40, vary=0.2), tmp_path)
    result = pre.preprocess(raw, str(tmp_path / "ds"), image_size=48, store=STORE)
    model = tmp_path / "model"
    args = ["--data", result.dataset_url, "--out", str(model), "--epochs", "1", "--batch-size", "8"]
    cifarflow("train", *args)
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test"]["images"] == 6


@pytest.mark.slow
def test_run_on_an_archive_of_class_folders_trains_and_evaluates(tmp_path: Path) -> None:
    """`cifarflow run --source <tar.gz of class folders> --image-size 48`: ingest, Spark, one epoch, evaluate."""
    archive = tmp_path / "shapes.tar.gz"
    write_image_folder(
        str(archive), classes=3, train=60, test=15, size=40, seed=1, vary=0.2, store=STORE, archive="tar.gz"
    )
    work = tmp_path / "work"
    args = ["run", "--source", str(archive), "--workdir", str(work), "--image-size", "48", "--epochs", "1"]
    facts = cifarflow(*args, "--batch-size", "16")
    assert {"dataset", "model", "test_accuracy", "report"} <= set(facts)
    manifest, _ = mf.load(STORE, facts["dataset"])
    assert (manifest.image.height, manifest.image.width) == (48, 48)
    metrics = json.loads((Path(facts["model"].removeprefix("file://")) / "metrics.json").read_text())
    assert metrics["test"]["images"] == 15
    assert np.isfinite(float(facts["test_accuracy"]))
