"""Where calibration and evaluation batches come from.

A source is one of:
- a directory of ``.npz`` files (keys = graph input names; an optional
  ``labels``/``label`` key carries classification labels) and/or ``.npy``
  files (``{input_name}.npy``, or any name when the graph has one input), one
  batch per file, read in sorted order;
- a ``.txt`` file, one text per line, for text models: tokenized with the
  model's own TextPipeline so calibration sees exactly what serving produces;
- ``module:function`` (importable from the working directory): the function,
  called without arguments, returns an iterable of feed dicts;
- in Python, also a callable or a list of feed dicts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from ..errors import EdgeError

CalibrationSource = Union[Path, str, Callable[[], Iterable[dict]], Sequence[dict]]

LABEL_KEYS = ("labels", "label")
TEXT_BATCH = 8


class CalibrationDataError(EdgeError):
    """A calibration or evaluation source cannot be read or does not fit the graph."""

    code = "calibration_data_invalid"
    http_status = 400


def load_batches(source: CalibrationSource, input_names: Sequence[str], text_pipeline=None) -> list[dict]:
    """All batches of ``source`` as dicts; label keys are kept for the gate."""
    if isinstance(source, (list, tuple)):
        batches = list(source)
    elif callable(source):
        batches = list(source())
    else:
        batches = _from_spec(str(source), input_names, text_pipeline)
    if not batches:
        raise CalibrationDataError(f"{source}: no batches")
    for i, b in enumerate(batches):
        missing = [n for n in input_names if n not in b]
        if missing:
            raise CalibrationDataError(f"{source}: batch {i} lacks graph inputs {missing} (has {sorted(b)})")
    return batches


def _from_spec(spec: str, input_names: Sequence[str], text_pipeline) -> list[dict]:
    path = Path(spec)
    if path.is_dir():
        return _from_dir(path, input_names)
    if path.suffix == ".txt" and path.is_file():
        if text_pipeline is None:
            raise CalibrationDataError(f"{path}: a .txt source needs a text model (model.yaml text:)")
        return text_batches(path.read_text().splitlines(), text_pipeline)
    if ":" in spec and not path.exists():
        return _from_function(spec)
    raise CalibrationDataError(f"{spec}: not a directory, a .txt file or module:function")


def text_batches(lines: Iterable[str], text_pipeline, batch: int = TEXT_BATCH) -> list[dict]:
    texts = [ln.strip() for ln in lines if ln.strip()]
    out = []
    for i in range(0, len(texts), batch):
        rows = np.array([[t.encode()] for t in texts[i : i + batch]], dtype=object)
        out.append(text_pipeline.prepare(rows))
    return out


def _from_dir(path: Path, input_names: Sequence[str]) -> list[dict]:
    out = []
    for f in sorted(path.iterdir()):
        try:
            if f.suffix == ".npz":
                with np.load(f, allow_pickle=False) as z:
                    out.append({k: z[k] for k in z.files})
            elif f.suffix == ".npy":
                arr = np.load(f, allow_pickle=False)
                name = f.stem if f.stem in input_names else (input_names[0] if len(input_names) == 1 else None)
                if name is None:
                    raise CalibrationDataError(f"{f}: .npy files must be named after a graph input {list(input_names)}")
                out.append({name: arr})
        except (OSError, ValueError) as e:
            raise CalibrationDataError(f"{f}: cannot read: {e}") from None
    return out


def _from_function(spec: str) -> list[dict]:
    mod_name, _, fn_name = spec.partition(":")
    # The data reader usually lives beside the user's own scripts.
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise CalibrationDataError(f"{spec}: cannot import: {e}") from None
    return list(fn())


def labels_of(batch: dict) -> np.ndarray | None:
    for k in LABEL_KEYS:
        if k in batch:
            return np.asarray(batch[k]).reshape(-1)
    return None


def feeds_of(batch: dict, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: batch[n] for n in input_names}


class FeedReader(CalibrationDataReader):
    """ORT calibration reader over loaded batches, with a progress bar."""

    def __init__(self, batches: list[dict], input_names: Sequence[str], progress: bool = True, desc: str = "calibrating"):
        self._input_names = list(input_names)
        self._batches = batches
        self._progress = progress
        self._desc = desc
        self.rewind()

    def _iter(self) -> Iterator[dict]:
        for b in tqdm(self._batches, desc=self._desc, unit="batch", disable=not self._progress, leave=False):
            yield feeds_of(b, self._input_names)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = self._iter()

    def __len__(self):
        return len(self._batches)
