"""The text-angle classifier's decision (PP-OCR cls, labels 0° and 180°), as RapidOCR 1.4.4:
a crop is turned by 180° only when the classifier says 180° AND is more sure than the
threshold, because wrongly flipping upright text ruins the recognition while a missed flip
of upside-down text is rare on camera images."""

from __future__ import annotations

import numpy as np


def flips(probs: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """(N, 2) probabilities of [0°, 180°] -> (N,) bool: rotate this crop by 180°."""
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"flips wants (N, 2) probabilities, got shape {probs.shape}")
    return (probs.argmax(axis=1) == 1) & (probs[:, 1] > threshold)


def rotate180(img: np.ndarray) -> np.ndarray:
    """The crop turned by 180° (C-contiguous, as the next step's resize expects)."""
    return np.ascontiguousarray(img[::-1, ::-1])
