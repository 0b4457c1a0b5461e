"""Bad input to `cifarflow train` / `evaluate`: one clear line, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cifarflow.cli import main

from .helpers import free_port


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; return its one error line (and check there is exactly one, and exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def copy(dataset: str, tmp_path: Path) -> Path:
    target = tmp_path / "ds"
    shutil.copytree(dataset, target)
    return target


def train(data: str | Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32", *extra]


def test_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = run(train(tmp_path / "nothing", tmp_path / "out"), capsys)
    assert "no dataset at" in line and "(no _manifest.json)" in line and "cifarflow preprocess" in line
    assert not (tmp_path / "out").exists()


def test_half_written_dataset(tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = copy(tiny_dataset, tmp_path)
    (ds / "_manifest.json").unlink()  # shards and stats landed, the commit never happened
    line = run(train(ds, tmp_path / "out"), capsys)
    assert "holds shards but no _manifest.json: the dataset was never committed" in line
    assert not (tmp_path / "out").exists()


def test_shard_that_does_not_match_its_checksum(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = copy(tiny_dataset, tmp_path)
    shard = ds / "train" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01  # one bit, same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    line = run(train(ds, tmp_path / "out", "--depth", "8", "--width", "4"), capsys)
    assert "part-00001.parquet does not match its manifest checksum (modified or corrupt)" in line
    assert not (tmp_path / "out").exists()  # no checkpoint, no model, no logs


def test_images_that_do_not_fit_the_model(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = copy(tiny_dataset, tmp_path)
    manifest = json.loads((ds / "_manifest.json").read_text())
    manifest["image"].update(channels=1)  # any size is taken (the model follows it), but only RGB
    (ds / "_manifest.json").write_text(json.dumps(manifest))
    line = run(train(ds, tmp_path / "out"), capsys)
    assert "holds 32x32x1 HWC uint8 images, the models take HWC uint8 RGB images" in line
    assert "preprocess the images to RGB" in line
    assert not (tmp_path / "out").exists()


def test_unreachable_model_url(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = run(
        [*train(tiny_dataset, Path("/unused")), "--out", "s3://models/run", "--s3-endpoint", dead], capsys
    )
    assert "cannot reach the storage endpoint for s3://models/run" in line and "--s3-endpoint" in line
    line = run(
        ["evaluate", "--data", tiny_dataset, "--model", "s3://models/run", "--s3-endpoint", dead], capsys
    )
    assert "cannot reach the storage endpoint" in line


def test_evaluating_a_folder_without_a_model(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model").mkdir()
    line = run(["evaluate", "--data", tiny_dataset, "--model", str(tmp_path / "model")], capsys)
    assert f"no SavedModel at {tmp_path}/model/saved_model" in line
    assert list((tmp_path / "model").iterdir()) == []


def test_resuming_checkpoints_of_another_model_is_refused(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "out" / "checkpoints" / "latest.json"
    marker.parent.mkdir(parents=True)
    saved = {
        "name": "ckpt-000000010",
        "step": 10,
        "epoch": 0.6,
        "architecture": "0123456789abcdef",
        "batch_size": 32,
    }
    marker.write_text(json.dumps(saved))
    line = run(train(tiny_dataset, tmp_path / "out", "--model", "resnet9"), capsys)
    # No run.json says which settings wrote them: refused rather than resumed into a mix of two runs.
    assert f"{marker} belongs to a training run that no run.json describes" in line
    assert "use another --out" in line
    assert json.loads(marker.read_text()) == saved


def test_parameter_server_tf_config(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tf_config = {"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    line = run(train(tiny_dataset, tmp_path / "out"), capsys)
    assert "TF_CONFIG has parameter servers (ps)" in line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--depth", "7"], "--depth 7 is invalid: input should be greater than or equal to 8 (fix: use 6n+2"),
        (["--depth", "9"], "--depth 9 is not a CIFAR ResNet depth (fix: use 6n+2"),
        (
            ["--lr", "nan"],
            "--lr nan is invalid: input should be a finite number (fix: give a finite learning rate",
        ),
        (
            ["--lr", "inf"],
            "--lr inf is invalid: input should be a finite number (fix: give a finite learning rate",
        ),
        (
            ["--lr", "-1"],
            "--lr -1.0 is invalid: input should be greater than 0 (fix: give a finite learning rate",
        ),
    ],
)
def test_a_bad_training_option_is_one_line_naming_it(
    option: list[str], expected: str, tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run(train(tiny_dataset, tmp_path / "out", *option), capsys)
    assert line.startswith(f"error: {expected}"), line
    assert not (tmp_path / "out").exists()


def test_a_destination_that_is_a_file_is_one_line(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    for out in (file, file / "model"):
        line = run(train(tiny_dataset, out), capsys)
        assert f"--out {out} must be a folder, but {file} is a file (fix: point --out at a" in line
    (tmp_path / "model").mkdir()
    line = run(
        ["evaluate", "--data", tiny_dataset, "--model", str(tmp_path / "model"), "--out", str(file)], capsys
    )
    assert f"--out {file} must be a folder, but {file} is a file" in line
    assert file.read_text() == "mine\n" and list((tmp_path / "model").iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_leaves_no_partial_files(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from the filesystem (half a file written, then the error) while uploading a checkpoint, then
    while uploading the SavedModel: one line each; a rerun on a disk with room resumes and finishes."""
    import errno

    from fsspec.implementations.local import LocalFileSystem

    copy_file = LocalFileSystem.cp_file
    full: list[str] = []  # path fragments whose writes hit a full disk

    def cp_file(self: LocalFileSystem, path1: str, path2: str, **kw: object) -> None:
        if any(part in path2 for part in full):
            with open(path1, "rb") as src, open(path2, "wb") as dst:
                dst.write(src.read()[: 1 << 10])
            raise OSError(errno.ENOSPC, "No space left on device", path2)
        copy_file(self, path1, path2, **kw)

    monkeypatch.setattr(LocalFileSystem, "cp_file", cp_file)
    out = tmp_path / "model"
    args = train(tiny_dataset, out, "--depth", "8", "--width", "4", "--no-evaluate")
    expected = f"error: no space left writing {out}/"

    full[:] = ["/checkpoints/ckpt-"]
    assert run(args, capsys).startswith(expected)
    assert not list(out.glob("checkpoints/*"))  # the checkpoint cut short is gone, nothing was committed

    full[:] = ["/saved_model/"]
    assert run(args, capsys).startswith(expected)
    assert not (out / "saved_model").exists()
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 512 // 32
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    full[:] = []
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    assert (out / "saved_model" / "saved_model.pb").is_file()
