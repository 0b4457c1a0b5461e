"""Decode one encoded image (JPEG, PNG, BMP, WebP) to RGB uint8 HWC, optionally resized to N×N.

The policy, in the order it is applied:

1. **Formats.** The bytes must be JPEG (or MPO, the multi-picture JPEG phones write), PNG, BMP or WebP, whatever
   the file's extension says. Other formats Pillow could open (GIF, TIFF, PSD...) are refused: fewer decoders
   exposed to untrusted files.
2. **Size limit.** The header's pixel count is checked against ``max_pixels`` (default :data:`MAX_PIXELS`,
   Pillow's own default limit, ~89.5 Mpx, ~256 MiB as RGB) *before* any pixel is decoded, so a decompression bomb
   (a small file whose header claims e.g. 100 000 × 100 000) is refused without allocating it
   (:class:`ImageTooLarge`). Pillow's own ``DecompressionBomb`` warning and error are converted by type too.
3. **Draft.** A JPEG much larger than the target is decoded at a reduced scale (libjpeg's DCT scaling, 1/2, 1/4,
   1/8) that stays at least :data:`DRAFT_GAP` × N on both sides, so the final filter still has real pixels to
   work with (the same idea as Pillow's ``thumbnail(reducing_gap=2.0)``); see docs/benchmarks.md for the gain.
4. **Orientation.** The EXIF orientation tag is applied (``ImageOps.exif_transpose``): pixels land the way a
   viewer shows them.
5. **Colour.** Everything becomes RGB uint8: greyscale (``1``, ``L``) is replicated to three channels; 16-bit
   greyscale (``I;16*``, ``I``) keeps its high byte (``I`` is clipped to 0..65535 first); float ``F`` is read as
   0..255 (Pillow's own convention) and clipped; palettes are expanded; CMYK uses Pillow's conversion (no ICC
   colour management); 16-bit RGB(A) PNGs are reduced to 8 bits by the decoder. **Alpha** (``RGBA``, ``LA``,
   palette transparency) is composited over a fixed white background (:data:`BACKGROUND`), the way a viewer
   shows it: dropping alpha would expose whatever colour the encoder left in transparent pixels (often black,
   sometimes junk).
6. **Resize** (only when ``size`` is given): the shorter side is scaled to N and the centre N×N is cropped, the
   usual evaluation transform, in one Pillow ``resize`` with a ``box`` (bicubic, antialiased when shrinking).
   Without ``size`` the image keeps its own size.

Anything that cannot be decoded (zero bytes, truncated, not an image, a refused format) raises
:class:`UndecodableImage`, one type callers catch to skip and record the file. Animated images give their first
frame.

Pillow's warning filters are process-global: :func:`decode` changes them only inside a ``catch_warnings`` block,
which is safe in Spark's one-task-per-process Python workers but not across threads of one process.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

# Registers the decoders FORMATS names: Image.open(formats=...) only tries plugins already imported.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from cifarflow.errors import InputError

# Pillow names; its JPEG opener also returns MPO (multi-picture JPEG, as phones write) where it applies.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (~256 MiB as RGB)
DRAFT_GAP = 2.0
BACKGROUND = (255, 255, 255)
RESAMPLE = Image.Resampling.BICUBIC
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112

# What Pillow's decoders raise on malformed data (UnidentifiedImageError and "image file is truncated" are
# OSErrors) and on a header over its own pixel limit: each is a property of the file, not a bug in the caller.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised, not warned, inside _opened
)


class UndecodableImage(InputError):
    """An image file that cannot be decoded; callers skip and record it (or stop, when strict)."""


class ImageTooLarge(UndecodableImage):
    """An image whose header claims more pixels than the limit (a decompression bomb); refused unread."""


class ImageInfo(NamedTuple):
    """What the header says. ``width``/``height`` are as displayed (after EXIF orientation, when the header
    carries it); ``mode`` and ``format`` are Pillow's names (``"RGB"``, ``"JPEG"``)."""

    width: int
    height: int
    mode: str
    format: str


def _undecodable(name: str, exc: BaseException) -> UndecodableImage:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageTooLarge(
            f"{name}: the image header claims too many pixels ({type(exc).__name__})",
            "remove the file or re-encode it smaller",
        )
    return UndecodableImage(
        f"{name}: not a decodable JPEG/PNG/BMP/WebP image ({type(exc).__name__})",
        "re-encode or remove the file",
    )


@contextlib.contextmanager
def _opened(data: bytes, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image behind ``data`` with only its header read, refused when it is empty or too large; any decoding
    error inside the block becomes :class:`UndecodableImage`."""
    if not data:
        raise UndecodableImage(f"{name}: empty file (0 bytes)", "remove the file or copy it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels}",
                        "remove the file or re-encode it smaller",
                    )
                yield im
    except UndecodableImage:
        raise
    except _DECODE_ERRORS as exc:
        raise _undecodable(name, exc) from exc


def _header_orientation(im: Image.Image) -> int:
    """The EXIF orientation if the header already holds the EXIF block (never decodes pixels to find it)."""
    raw = im.info.get("exif")
    if not isinstance(raw, bytes):
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(_ORIENTATION, 1))


def probe(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Width, height, mode and format from the header alone (no pixel is decoded).

    Raises :class:`UndecodableImage` (or :class:`ImageTooLarge`) exactly where :func:`decode` would refuse the
    file before decoding.
    """
    with _opened(data, name, max_pixels) as im:
        width, height = im.size
        if _header_orientation(im) in _ROTATED:
            width, height = height, width
        return ImageInfo(width, height, im.mode, str(im.format))


def _composite(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _from_wide(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale to ``L`` (Pillow's own ``convert`` would clip, not scale)."""
    arr = np.asarray(im)
    if im.mode == "F":
        out = np.clip(np.nan_to_num(arr), 0, 255).round()
    else:
        out = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(out.astype(np.uint8))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB (8 bits a channel), alpha composited over :data:`BACKGROUND`."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        # A palette may carry transparency (tRNS); only then does it need compositing.
        return _composite(im) if "transparency" in im.info else im.convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _from_wide(im).convert("RGB")
    if "A" in mode or "a" in mode or (mode in ("L", "RGB") and "transparency" in im.info):
        return _composite(im)
    return im.convert("RGB")


def _draft(im: Image.Image, size: int) -> None:
    """Let libjpeg decode a large JPEG at a reduced scale, keeping both sides >= DRAFT_GAP * size."""
    if im.format in ("JPEG", "MPO"):
        target = int(size * DRAFT_GAP)
        im.draft(None, (target, target))


def centre_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of side ``min(width, height)``: scaling it to N×N is "shorter side to N, then centre
    crop" in one step."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def resize_square(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the centre ``size``×``size`` (a no-op for an image already that size)."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), RESAMPLE, box=centre_crop_box(*im.size))


def decode(
    data: bytes,
    size: int | None = None,
    *,
    name: str = "image",
    max_pixels: int = MAX_PIXELS,
    draft: bool = True,
) -> np.ndarray:
    """The image as a ``(height, width, 3)`` uint8 array, resized to ``size``×``size`` when ``size`` is given.

    ``name`` (a path) goes into error messages; ``draft=False`` turns off reduced-scale JPEG decoding (for the
    benchmark). See the module docstring for the exact policy.
    """
    if size is not None and size < 1:
        raise ValueError(f"size must be positive, not {size}")
    with _opened(data, name, max_pixels) as im:
        if size is not None and draft:
            _draft(im, size)
        im.load()
        # Rotates the decoded pixels by the EXIF tag, in place (no copy when there is no tag).
        ImageOps.exif_transpose(im, in_place=True)
        rgb = to_rgb(im)
        if size is not None:
            rgb = resize_square(rgb, size)
        out = np.asarray(rgb, dtype=np.uint8)
    # Pillow can hand out a read-only view of its buffer; callers get an array they own.
    return out if out.flags.writeable else out.copy()
