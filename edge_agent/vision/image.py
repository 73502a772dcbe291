"""Encoded image bytes -> a ``(H, W, 3)`` uint8 BGR array, within limits.

An image from a client is hostile until decoded. ``decode`` refuses, in this
order and before anything the size of the picture is allocated:

1. zero bytes, and more encoded bytes than ``max_bytes`` (the bytes actually
   received, not a size the client claims);
2. a header that is not one of the accepted formats;
3. dimensions over ``max_side`` / ``max_pixels`` as the header states them: a
   16 KB PNG may claim 100000 x 100000 pixels (a decompression bomb) and is
   refused with ``image_too_large`` before a single row is inflated;
4. a channel count the model does not take;

and only then decodes, where a corrupt or truncated file is ``invalid_image``
(never a half-grey picture: Pillow's truncated-image leniency is off).

Pillow decodes (as RapidOCR 1.4.4's ``LoadImage`` does for bytes, so the
daemon sees the same pixels as the reference pipeline); the conversion to
BGR follows RapidOCR too, except that transparency is composited over white
for every mode (RapidOCR inverts some RGBA images) and palette images are
expanded to their colours (RapidOCR reads their indices as grey).
"""

from __future__ import annotations

import io
from typing import List, Literal

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from pydantic import Field

from ..config import Section
from ..errors import EdgeError, ImageTooLarge, InvalidImage

# Never hand back a partly decoded picture (Pillow's default, said once here).
ImageFile.LOAD_TRUNCATED_IMAGES = False

Format = Literal["jpeg", "png", "bmp", "webp"]
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}
# Modes Pillow turns into plain 8-bit colour first; 16/32-bit and float modes are refused.
_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_TO_RGBA = {"PA", "RGBa", "La"}
# Whatever Pillow's plugins raise on a hostile file (OSError, SyntaxError, struct.error,
# ValueError, ... differ by plugin and version) is the file's fault: invalid_image. Seeded
# mutations of PNG/JPEG/BMP/WebP files (tests/vision/test_image.py) never see another error.
_DECODE_ERRORS = (Exception,)


class ImageLimits(Section):
    """What a model takes as an encoded image (model.yaml ``image:``)."""

    max_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest encoded image, in bytes received; over it: image_too_large.")
    max_pixels: int = Field(16_000_000, gt=0, description="Largest width x height the header may state (decompression bombs); over it: image_too_large, before decoding. Decoding takes about 17 bytes a pixel at its peak (an RGBA PNG: Pillow's buffer, its array, the BGR copy and the alpha compositing), so 16 M pixels (4000 x 4000) is ~270 MB per image being decoded. Pillow refuses more than 178956970 pixels whatever this says (also image_too_large).")
    max_side: int = Field(16384, gt=0, description="Longest side the header may state; over it: image_too_large, before decoding.")
    channels: List[int] = Field([1, 2, 3, 4], description="Channel counts of the encoded image accepted (1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha); others: invalid_image.")
    formats: List[Format] = Field(["jpeg", "png", "bmp", "webp"], description="Encoded formats accepted; any other file: invalid_image.")


def decode(data: bytes, limits: ImageLimits) -> np.ndarray:
    """``data`` (encoded bytes) -> ``(H, W, 3)`` uint8 BGR, C-contiguous.

    Raises InvalidImage or ImageTooLarge (module docstring); never anything else."""
    n = len(data)
    if n == 0:
        raise InvalidImage("the image is empty (0 bytes)")
    if n > limits.max_bytes:
        raise ImageTooLarge(f"the image is {n} bytes, more than this model's max_bytes {limits.max_bytes}",
                            limit="max_bytes", value=n, max=limits.max_bytes)
    im = _open(data, limits)
    try:
        _check_header(im, limits)
        try:
            im.load()
            return _to_bgr(im)
        except EdgeError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"the image is too large to decode: {e}", limit="max_pixels") from None
        except _DECODE_ERRORS as e:
            raise InvalidImage(f"the {im.format} image is corrupt or truncated: {_brief(e)}") from None
    finally:
        im.close()


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Read the header only (Pillow opens lazily)."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[f] for f in limits.formats])
    except Image.DecompressionBombError as e:
        # Pillow's own bound (2 x MAX_IMAGE_PIXELS) hit while reading the header.
        raise ImageTooLarge(f"the image header states more pixels than this model's max_pixels {limits.max_pixels}: {e}",
                            limit="max_pixels", max=limits.max_pixels) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"not an image in an accepted format ({', '.join(limits.formats)}); "
                           f"the data starts with {bytes(data[:8])!r}") from None
    except _DECODE_ERRORS as e:
        raise InvalidImage(f"the image header cannot be read: {_brief(e)}") from None


def _check_header(im: Image.Image, limits: ImageLimits) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise InvalidImage(f"the image header states {w}x{h} pixels")
    if max(w, h) > limits.max_side:
        raise ImageTooLarge(f"the image is {w}x{h} pixels; this model's max_side is {limits.max_side}",
                            limit="max_side", width=w, height=h, max=limits.max_side)
    if w * h > limits.max_pixels:
        raise ImageTooLarge(f"the image is {w}x{h} = {w * h} pixels, more than this model's max_pixels {limits.max_pixels}",
                            limit="max_pixels", width=w, height=h, max=limits.max_pixels)
    channels = len(im.getbands())
    if channels not in limits.channels:
        raise InvalidImage(f"the image has {channels} channels ({im.mode}); this model takes {limits.channels}")


def _to_bgr(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode)
    elif mode in _TO_RGBA:
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in _TO_RGB:
        im, mode = im.convert("RGB"), "RGB"
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise InvalidImage(f"image mode {mode} (16-bit or floating-point samples) is not supported; send 8-bit images")
    a = np.asarray(im)
    if mode == "L":
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if mode == "RGB":
        return cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    colour = cv2.cvtColor(a[..., 0], cv2.COLOR_GRAY2BGR) if mode == "LA" else cv2.cvtColor(a[..., :3], cv2.COLOR_RGB2BGR)
    return _over_white(colour, a[..., -1])


def _over_white(bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over a white background (what a viewer shows): (c·a + 255·(255 − a) + 127) // 255,
    one colour plane at a time, in place in ``bgr``. The temporaries are three uint16 planes
    (6 bytes a pixel); whole-image uint16 arithmetic took ~20 more, and a small RGBA PNG of a
    flat colour within max_pixels took the daemon past a gigabyte (hostile review)."""
    back = (255 * 255 + 127) - alpha.astype(np.uint16) * 255  # 255·(255 − a) + 127; c·a + back <= 65152
    t = np.empty(alpha.shape, np.uint16)
    for ch in range(3):
        np.multiply(bgr[..., ch], alpha, out=t, dtype=np.uint16)
        t += back
        t //= 255
        bgr[..., ch] = t
    return bgr


def _brief(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."
