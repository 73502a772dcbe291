#!/usr/bin/env python3
"""Render OCR sample images from GENERATED strings (seeded, so the same seed gives the same
images on every machine with the same fonts and Pillow), for the OCR demo's tests, the
quantization gate's calibration/held-out sets and the benchmark.

    scripts/render_ocr_samples.py --out DIR [--count 24] [--seed 18] [--format png|jpg]

writes DIR/sample-NN.{png,jpg} and DIR/truth.json ({file: [line, ...]}, top to bottom).
Other code loads this file and calls ``render(rng)`` / ``render_set(count, seed)``.

Why it looks like this: the strings are random words over letters and digits that no
OCR confuses with each other (no 0/O/o, 1/l/I, 5/S, 2/Z, 8/B, and no lower-case letter shaped like its capital: c, k, p, u, v, w, x, y; nor U and W, read as 0 and w) so a misread is a real
error, not a coin toss; one to three lines of one to three words; DejaVu fonts (Pillow's
built-in font where DejaVu is absent) at 22-40 px; a light random background, a slight
rotation (within 2.5°) and mild noise. Every image stays within RapidOCR's untouched range
(height > 30, width/height <= 8, sides <= 2000) so the reference pipeline adds no padding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = "ACDEFGHJKLMNPRTVXYadefghmnrt34679"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


def font(index: int, size: int):
    """A DejaVu face when the system has it, else Pillow's built-in scalable font."""
    path = FONT_DIR / FONTS[index % len(FONTS)]
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def words(rng: np.random.Generator) -> str:
    """One line: one to three generated words of 3-8 characters."""
    n = int(rng.integers(1, 4))
    return " ".join("".join(rng.choice(list(LETTERS), size=int(rng.integers(3, 9)))) for _ in range(n))


def render(rng: np.random.Generator):
    """One image (H, W, 3) uint8 BGR and its lines, top to bottom."""
    lines = [words(rng) for _ in range(int(rng.integers(1, 4)))]
    size = int(rng.integers(22, 41))
    face = font(int(rng.integers(0, len(FONTS))), size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    widths = [probe.textbbox((0, 0), ln, font=face)[2] for ln in lines]
    gap = int(size * 0.9)
    width = max(widths) + 2 * size + int(rng.integers(0, 60))
    height = len(lines) * (size + gap) + 2 * size
    width = max(width, height // 2)
    height = max(height, width // 6, 48)
    bg = int(rng.integers(200, 256))
    ink = int(rng.integers(0, 70))
    img = Image.new("L", (width, height), bg)
    draw = ImageDraw.Draw(img)
    y = size
    for ln in lines:
        draw.text((size + int(rng.integers(0, 20)), y), ln, font=face, fill=ink)
        y += size + gap
    img = img.rotate(float(rng.uniform(-2.5, 2.5)), resample=Image.BICUBIC, expand=False, fillcolor=bg)
    arr = np.asarray(img, np.float32)
    arr = arr + rng.normal(0, float(rng.uniform(0, 6)), arr.shape)
    gray = np.clip(arr, 0, 255).astype(np.uint8)
    tint = rng.integers(-12, 13, size=3)
    bgr = np.clip(gray[:, :, None].astype(np.int16) + tint, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(bgr), lines


def render_set(count: int, seed: int):
    """``count`` images and their lines from one seed (deterministic)."""
    rng = np.random.default_rng(seed)
    return [render(rng) for _ in range(count)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the images and truth.json")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--format", choices=("png", "jpg"), default="png")
    args = ap.parse_args(argv)
    import cv2  # only to write: the images are BGR arrays

    args.out.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (img, lines) in enumerate(render_set(args.count, args.seed)):
        name = f"sample-{i:02d}.{args.format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if args.format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
        if not cv2.imwrite(str(args.out / name), img, params):
            raise SystemExit(f"could not write {args.out / name}")
        truth[name] = lines
    (args.out / "truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(truth)} images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
