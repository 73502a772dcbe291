"""Encoded test images, good and hostile, made in memory (Pillow, zlib): shared by the vision,
transport and MQTT tests.

- ``encode``: an array -> PNG / JPEG / BMP bytes.
- ``digit_png``: the digits demo's sample (models/digits/1/sample.npy) as a 32x32 grey PNG.
- ``claimed_png``: a valid PNG whose header claims any size, with one tiny IDAT (a header-only bomb).
- ``zlib_bomb_png``: a real decompression bomb: a grey PNG of zeros, ``side`` x ``side``,
  a few hundred KB compressed, ``side**2`` bytes (x3 as BGR) once inflated.
- ``hostile_images``: name -> bytes of every kind of bad image the daemon must refuse.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from daemon_proc import DIGITS


def encode(arr: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    """``arr``: (H, W) grey or (H, W, 3) RGB uint8."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **save)
    return buf.getvalue()


def digit_pixels() -> np.ndarray:
    """The sample digit (values 0..16) as 32x32 uint8 grey 0..255 (each cell 4x4 pixels)."""
    cells = np.load(DIGITS / "sample.npy").reshape(8, 8)
    grey = np.round(cells * (255.0 / 16.0)).astype(np.uint8)
    return np.kron(grey, np.ones((4, 4), dtype=np.uint8))


def digit_png() -> bytes:
    return encode(digit_pixels())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def claimed_png(width: int, height: int) -> bytes:
    """A PNG (8-bit grey) whose IHDR claims width x height; its IDAT holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (min(width, 4096) + 1))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zlib_bomb_png(side: int) -> bytes:
    """A complete, valid grey PNG of zeros: tiny compressed, ``side * side`` bytes inflated."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def hostile_images() -> dict:
    """name -> (bytes, the error code the daemon must answer)."""
    good_png = digit_png()
    good_jpeg = encode(np.dstack([digit_pixels()] * 3), "JPEG", quality=90)
    return {
        "zero_bytes": (b"", "invalid_image"),
        "not_an_image": (b'{"inputs": []} this is text, not a picture' * 4, "invalid_image"),
        "truncated_png": (good_png[: len(good_png) // 2], "invalid_image"),
        "truncated_jpeg": (good_jpeg[: len(good_jpeg) // 2], "invalid_image"),
        "corrupt_png": (good_png[:60] + bytes(b ^ 0x5A for b in good_png[60:-12]) + good_png[-12:], "invalid_image"),
        "huge_dimensions": (claimed_png(100000, 100000), "image_too_large"),
    }


# The digits demo as an image model: a PNG of a digit in, the usual label/top-k answer out.
# decode -> grey -> 8x8 (area average: the 4x4 cells of digit_png come back exactly) ->
# x 16/255 (pixels 0..255 -> the 0..16 the MLP was trained on) -> flat [64].
DIGITS_IMAGE = {
    "input": "image",
    "max_bytes": 65536,
    "max_pixels": 1_000_000,
    "preprocess": {"color": "gray", "resize": {"mode": "stretch", "height": 8, "width": 8, "interpolation": "area"},
                   "normalize": {"scale": 16 / 255}, "layout": "NHWC"},
    "reshape": [64],
}


def digits_image_model(models_dir, name: str = "digits-image", version: str = "1", **image):
    """The shipped digits graph as ``{models_dir}/{name}/{version}`` taking a PNG/JPEG input ``image``."""
    import shutil

    import yaml

    dest = models_dir / name / version
    shutil.copytree(DIGITS, dest)
    spec = yaml.safe_load((dest / "model.yaml").read_text())
    spec["name"] = name
    spec["inputs"] = [{"name": "image", "datatype": "BYTES", "dims": [1]}]
    spec["image"] = {**DIGITS_IMAGE, **image}
    (dest / "model.yaml").write_text(yaml.safe_dump(spec))
    return dest
