"""data/images.py: real files written by Pillow (or crafted byte by byte where Pillow cannot write them) in every
colour mode, decoded to RGB uint8 with the documented orientation, alpha and resize policy."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from cifarflow.data import images
from cifarflow.data.images import ImageTooLarge, UndecodableImage, decode, probe, to_rgb
from cifarflow.errors import InputError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A PNG built chunk by chunk: for what Pillow cannot write (16-bit RGB) or must not be asked to (a header
    claiming 10^10 pixels over a few bytes of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def halves(
    size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB"
) -> Image.Image:
    """An image whose left half is ``left`` and right half is ``right``."""
    im = Image.new(mode, size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def assert_colour(arr: np.ndarray, colour: tuple[int, int, int], tol: int = 0) -> None:
    diff = np.abs(arr.reshape(-1, 3).astype(int) - np.array(colour)).max()
    assert diff <= tol, f"max deviation {diff} from {colour}"


# -- colour modes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("LA", (77, 255), (77, 77, 77)),
        ("LA", (0, 0), WHITE),  # fully transparent: the background, not the stored black
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),  # half-transparent red over white
        ("RGBA", (0, 0, 255, 255), BLUE),
    ],
)
def test_png_modes_become_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    data = encode(Image.new(mode, (6, 4), value), "PNG")  # type: ignore[arg-type]
    assert probe(data).mode == mode
    out = decode(data)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert_colour(out, expected, tol=1)


def test_16bit_greyscale_png_keeps_the_high_byte() -> None:
    arr = np.array([[0, 0x8000, 0xFFFF, 0x00FF]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert probe(data).mode.startswith("I;16")
    out = decode(data)
    assert out[0, :, 0].tolist() == [0, 128, 255, 0]  # Pillow's own convert("RGB") would clip 0x8000 to 255
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_rgb_png() -> None:
    pixel = struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000)
    data = raw_png(2, 1, 16, 2, rows=b"\0" + pixel * 2)
    assert_colour(decode(data), (255, 128, 0))


@pytest.mark.parametrize(
    ("mode", "array", "expected"),
    [
        ("I", np.array([[0, 0x8000, 70000, -5]], dtype=np.int32), [0, 128, 255, 0]),
        ("F", np.array([[0.0, 127.6, 300.0, -1.0]], dtype=np.float32), [0, 128, 255, 0]),
    ],
)
def test_wide_greyscale_modes(mode: str, array: np.ndarray, expected: list[int]) -> None:
    # No accepted format decodes to I or F (Pillow cannot even write them as PNG), so the conversion is tested
    # on the Image directly.
    im = Image.fromarray(array)
    assert im.mode == mode
    assert np.asarray(to_rgb(im))[0, :, 1].tolist() == expected


def test_palette_without_and_with_transparency() -> None:
    im = halves((8, 4), RED, BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    opaque = encode(im, "PNG")
    assert probe(opaque).mode == "P"
    out = decode(opaque)
    assert_colour(out[:, :4], RED)
    assert_colour(out[:, 4:], BLUE)

    transparent_index = im.getpixel((0, 0))
    clear = encode(im, "PNG", transparency=transparent_index)
    out = decode(clear)
    assert_colour(out[:, :4], WHITE)  # the transparent entry shows the background
    assert_colour(out[:, 4:], BLUE)


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert probe(data).mode == "CMYK"
    assert_colour(decode(data), RED, tol=6)


@pytest.mark.parametrize(("fmt", "params"), [("BMP", {}), ("WEBP", {"lossless": True})])
def test_bmp_and_webp(fmt: str, params: dict[str, object]) -> None:
    data = encode(halves((8, 4), RED, GREEN), fmt, **params)
    out = decode(data)
    assert probe(data).format == fmt
    assert_colour(out[:, :4], RED)
    assert_colour(out[:, 4:], GREEN)


def test_webp_with_alpha() -> None:
    data = encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "WEBP", lossless=True)
    assert_colour(decode(data), WHITE)


def test_progressive_jpeg() -> None:
    src = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    src = np.asarray(Image.fromarray(src).resize((16, 12)).resize((64, 48)))  # smooth: JPEG keeps it close
    data = encode(Image.fromarray(src), "JPEG", quality=95, progressive=True)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info.get("progressive")
    out = decode(data)
    assert out.shape == src.shape
    assert np.abs(out.astype(int) - src).mean() < 4


# -- orientation -------------------------------------------------------------------------------------------------


def test_exif_rotated_jpeg_lands_rotated() -> None:
    # Stored 40 wide x 20 high, red left half, blue right; orientation 6 = "rotate 90° clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves((40, 20), RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())
    assert probe(data)[:2] == (20, 40)  # the displayed size
    out = decode(data)
    assert out.shape == (40, 20, 3)
    assert_colour(out[2:18], RED, tol=40)  # the left half went to the top
    assert_colour(out[22:38], BLUE, tol=40)


# -- broken files ---------------------------------------------------------------------------------------------------


def _jpeg() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), "JPEG")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="zero-bytes"),
        pytest.param(b"label,path\ncat,cat/1.jpg\n", id="not-an-image"),
        pytest.param(_jpeg()[: len(_jpeg()) // 2], id="truncated-jpeg"),
        pytest.param(_jpeg()[:200], id="jpeg-header-only"),
        pytest.param(encode(Image.new("RGB", (4, 4)), "GIF"), id="gif-not-accepted"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, id="png-signature-then-junk"),
    ],
)
def test_broken_files_raise_one_type(data: bytes) -> None:
    with pytest.raises(UndecodableImage) as info:
        decode(data, 32, name="cat/1.jpg")
    assert isinstance(info.value, InputError)
    assert str(info.value).startswith("cat/1.jpg: ")
    assert "\n" not in str(info.value) and info.value.fix


def test_probe_reads_only_the_header() -> None:
    noise = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    cut = data[: len(data) // 2]  # half the pixel data is gone, the header is whole
    assert probe(cut) == images.ImageInfo(30, 20, "RGB", "PNG")
    with pytest.raises(UndecodableImage):
        decode(cut)
    with pytest.raises(UndecodableImage):
        probe(b"")


# -- decompression bombs -----------------------------------------------------------------------------------


def test_huge_header_png_is_refused_unallocated() -> None:
    """A 100 000 x 100 000 RGB header (30 GB of pixels) over a few bytes: refused in a child process whose
    address space is capped at 1 GiB, so any attempt to allocate the pixels would fail there instead."""
    script = textwrap.dedent(
        """
        import resource, sys
        from cifarflow.data.images import ImageTooLarge, decode, probe
        data = sys.stdin.buffer.read()
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        for call in (lambda: probe(data), lambda: decode(data, 224)):
            try:
                call()
            except ImageTooLarge as exc:
                print(type(exc).__name__, exc)
        """
    )
    bomb = raw_png(100_000, 100_000, 8, 2)
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], input=bomb, capture_output=True, timeout=60, env=env, check=True
    )
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("ImageTooLarge ") for line in lines), done


def test_pillow_bomb_error_and_warning_are_converted_by_type() -> None:
    # Over twice Pillow's limit: Pillow's own DecompressionBombError fires at open, even with our limit lifted.
    with pytest.raises(ImageTooLarge) as info:
        decode(raw_png(100_000, 100_000, 8, 2), max_pixels=10**12)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
    # Between Pillow's limit and twice it, Pillow only warns: the warning is raised and converted too.
    with pytest.raises(ImageTooLarge) as info:
        probe(raw_png(10_000, 10_000, 8, 0), max_pixels=10**12)
    assert isinstance(info.value.__cause__, Image.DecompressionBombWarning)


def test_own_pixel_limit() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="100x100 pixels is over the limit of 9999"):
        decode(data, max_pixels=9_999)
    assert decode(data, max_pixels=10_000).shape == (100, 100, 3)


# -- resize -----------------------------------------------------------------------------------------------------


def _framed(size: tuple[int, int]) -> Image.Image:
    """Green centre square (side = the shorter side), red beyond it."""
    w, h = size
    side = min(w, h)
    im = Image.new("RGB", size, RED)
    im.paste(GREEN, ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return im


@pytest.mark.parametrize("size", [(200, 100), (100, 200)])
def test_shorter_side_then_centre_crop(size: tuple[int, int]) -> None:
    out = decode(encode(_framed(size), "PNG"), 50)
    assert out.shape == (50, 50, 3)
    assert_colour(out[1:-1, 1:-1], GREEN, tol=8)  # the red margins were cropped away


def test_upscale_and_no_resize() -> None:
    data = encode(Image.new("RGB", (16, 12), BLUE), "PNG")
    assert decode(data, 32).shape == (32, 32, 3)
    assert decode(data).shape == (12, 16, 3)
    assert decode(encode(Image.new("RGB", (32, 32), BLUE), "PNG"), 32).shape == (32, 32, 3)


def test_draft_decodes_large_jpeg_close_to_full_decode() -> None:
    yy, xx = np.mgrid[0:768, 0:1024]
    smooth = np.stack([xx * 255 // 1023, yy * 255 // 767, (xx + yy) * 255 // 1790], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(smooth), "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as im:
        images._draft(im, 96)
        assert im.size == (256, 192)  # libjpeg's 1/4 scale: both sides still >= 2 x 96
    fast, full = decode(data, 96), decode(data, 96, draft=False)
    assert fast.shape == full.shape == (96, 96, 3)
    assert np.abs(fast.astype(int) - full).mean() < 2


def test_decoded_array_is_writable() -> None:
    out = decode(encode(Image.new("RGB", (4, 4)), "PNG"))
    out[0, 0] = 1  # no "assignment destination is read-only"
