"""Helpers of the memory-admission tests: a digits version whose file is larger (different digest),
and the watermark that makes a given need "too much" on this machine right now."""

from __future__ import annotations

import numpy as np
import onnx
import psutil
from daemon_proc import copy_digits
from onnx import numpy_helper

MB = 1024 * 1024


def padded_digits(models_dir, version: str, pad_bytes: int):
    """digits at ``version`` with an unused initializer of ``pad_bytes``: same answers, a bigger file."""
    d = copy_digits(models_dir, version)
    m = onnx.load(d / "model.onnx")
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(pad_bytes // 4, np.float32), "pad"))
    onnx.save(m, d / "model.onnx")
    return d


def watermark_between(small_need: int, big_need: int) -> int:
    """memory.min_available_mb under which a load of ``small_need`` bytes fits and one of ``big_need``
    does not, from the memory available now (psutil, as the daemon reads it): halfway between."""
    avail = psutil.virtual_memory().available
    return int((avail - (small_need + big_need) / 2) // MB)
