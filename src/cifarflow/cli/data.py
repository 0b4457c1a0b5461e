"""Data-plane commands: ``synth``, ``ingest``, ``preprocess``."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated, Any

import typer

from cifarflow.cli.common import BackendChoice, S3Endpoint, app, field_option, make_store, out, print_result
from cifarflow.config import PreprocessConfig, defaults
from cifarflow.errors import InputError

log = logging.getLogger(__name__)


class ArchiveFormat(StrEnum):
    python = "python"
    binary = "binary"
    folder = "folder"


class FolderArchive(StrEnum):
    tar_gz = "tar.gz"
    zip = "zip"


SynthOut = Annotated[
    str,
    typer.Option(
        "--out",
        help="CIFAR: tarball path/URL, or a folder to put the official file name in. Folder: a new folder, "
        "or with --archive a new .tar.gz/.zip.",
    ),
]
PREPROCESS = defaults(PreprocessConfig)  # the options' defaults: one declaration (cifarflow.config)


def preprocess_option(name: str) -> Any:
    """An option whose flag and help are :class:`PreprocessConfig`'s field's."""
    return field_option(PreprocessConfig, name)


FOLDER_IMAGE_SIZE = 64  # synth --format folder's default image side

MASTER_HELP = "Spark master: local[*], spark://host:7077, k8s://... (default: spark-submit's, else local[*])."


@app.command()
def synth(
    *,
    out_path: SynthOut,
    train: Annotated[int, typer.Option("--train", min=1, help="Train images.")] = 50_000,
    test: Annotated[int, typer.Option("--test", min=1, help="Test images.")] = 10_000,
    fmt: Annotated[
        ArchiveFormat,
        typer.Option(
            "--format", help="CIFAR's python pickles or binary records, or a class-per-folder image folder."
        ),
    ] = ArchiveFormat.python,
    classes: Annotated[
        int, typer.Option("--classes", help="CIFAR: 10 or 100. Folder: any number >= 2.")
    ] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Folder: image side in pixels (default 64).")
    ] = None,
    archive: Annotated[
        FolderArchive | None,
        typer.Option("--archive", help="Folder: write a .tar.gz or .zip with one top-level folder."),
    ] = None,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Write a learnable synthetic dataset: CIFAR's exact on-disk layout, or a class-per-folder image folder
    (PNG/JPEG mixed) for the image-folder path (tests, benchmarks, scale)."""
    if fmt == ArchiveFormat.folder:
        from cifarflow.data.synth_folders import write_image_folder

        url = write_image_folder(
            out_path,
            classes=classes,
            train=train,
            test=test,
            size=FOLDER_IMAGE_SIZE if image_size is None else image_size,
            seed=seed,
            store=make_store(s3_endpoint),
            archive=None if archive is None else archive.value,
        )
        out(url)
        return
    from cifarflow.data import synth as synth_mod

    for given, flag in ((image_size, "--image-size"), (archive, "--archive")):
        if given is not None:
            raise InputError(f"{flag} is for --format folder", f"drop {flag}, or pass --format folder")
    if classes not in (10, 100):
        raise InputError(f"--classes {classes} is not a CIFAR variant", "use --classes 10 or --classes 100")
    url = synth_mod.write_archive(
        out_path,
        train=train,
        test=test,
        fmt=fmt.value,
        classes=classes,
        seed=seed,
        store=make_store(s3_endpoint),
    )
    out(url)


@app.command()
def ingest(
    *,
    dest: Annotated[str, typer.Option("--dest", help="Bucket URL; raw files land under DEST/raw/.")],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="cifar10, cifar100, or a CIFAR .tar.gz, an image .tar/.tar.gz/.zip or a folder of class "
            "folders: a path, an http(s) URL (archives) or a bucket URL/prefix.",
        ),
    ] = "cifar10",
    md5: Annotated[
        str | None, typer.Option("--md5", help="Expected md5 of the archive (known for cifar10/cifar100).")
    ] = None,
    max_bytes: Annotated[
        int,
        typer.Option(
            "--max-bytes",
            min=1,
            help="Most bytes the archive may expand to, or the images may hold (bounds decompression bombs).",
        ),
    ] = 4 << 30,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Land a CIFAR archive or a class-per-folder image dataset in the bucket (idempotent, resumable)."""
    from cifarflow.data import ingest as ingest_mod

    result = ingest_mod.ingest(source, dest, store=make_store(s3_endpoint), md5=md5, max_bytes=max_bytes)
    out(f"raw: {result.raw_url}")


@app.command()
def preprocess(
    *,
    raw: Annotated[str, typer.Option("--raw", help="The DEST/raw root that `cifarflow ingest` wrote.")],
    out_url: Annotated[
        str, typer.Option("--out", help="Datasets root; the dataset lands in OUT/<dataset-id>/.")
    ],
    master: Annotated[str | None, typer.Option("--master", help=MASTER_HELP)] = None,
    partitions: Annotated[int | None, preprocess_option("partitions")] = PREPROCESS["partitions"],
    val_fraction: Annotated[float, preprocess_option("val_fraction")] = PREPROCESS["val_fraction"],
    seed: Annotated[int, preprocess_option("seed")] = PREPROCESS["seed"],
    image_size: Annotated[int | None, preprocess_option("image_size")] = PREPROCESS["image_size"],
    strict: Annotated[bool, preprocess_option("strict")] = PREPROCESS["strict"],
    backend: Annotated[
        BackendChoice, typer.Option("--backend", help="local: run Spark here; k8s: a SparkApplication.")
    ] = "local",
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Validate, deduplicate, split and normalise the raw data with Spark into a versioned Parquet dataset."""
    from cifarflow.backends import PreprocessRequest, get_backend
    from cifarflow.config import parse

    params = parse(
        PreprocessConfig,
        {
            "val_fraction": val_fraction,
            "seed": seed,
            "partitions": partitions,
            "image_size": image_size,
            "strict": strict,
        },
    )
    chosen = get_backend(str(backend), store=make_store(s3_endpoint))
    print_result(chosen.preprocess(PreprocessRequest(raw, out_url, params, master=master)))
