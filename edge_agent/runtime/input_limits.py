"""Request admission by size: model.yaml ``limits``, checked in ``LoadedModel.prepare`` before queueing.

A model with no limit set has no ``InputLimits`` at all (``input_limits``
returns None), so its requests pay one ``is not None`` test. With limits, the
tensor checks read shapes only (O(inputs), no pass over the data); the text
byte count is one ``len`` per row, before the tokenizer runs; tokens are
counted from the attention mask the tokenizer made. ``LoadedModel`` installs
the checker at the end of its warm-up, whose batches may be larger than what
clients may send.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..errors import InputTooLarge
from .model_spec import ModelSpec


class InputLimits:
    __slots__ = ("max_elements", "max_pixels", "max_text_bytes", "max_tokens", "_variable", "_text", "_batched", "model")

    def __init__(self, spec: ModelSpec, model: str, batched: bool) -> None:
        lim = spec.limits
        self.model = model
        self.max_elements, self.max_pixels = lim.max_elements, lim.max_pixels
        self.max_text_bytes, self.max_tokens = lim.max_text_bytes, lim.max_tokens
        self._batched = batched
        # Per input, the positions (batch axis excluded) of its variable dimensions.
        self._variable = {t.name: [i for i, d in enumerate(t.dims) if d == -1] for t in spec.inputs}
        self._text = spec.text.input if spec.text is not None else None

    def _refuse(self, what: str, value: int, limit: int, key: str, name: Optional[str] = None) -> InputTooLarge:
        where = f"input '{name}': " if name else ""
        return InputTooLarge(f"{where}{value} {what}, model '{self.model}' takes at most {limit} (model.yaml limits.{key})",
                             limit=key, value=value, max=limit, **({"input": name} if name else {}))

    def check(self, inputs: Dict[str, np.ndarray]) -> None:
        """Elements, pixels and text bytes of a request whose shapes were validated (raises InputTooLarge)."""
        if self.max_elements is not None:
            total = sum(a.size for a in inputs.values())
            if total > self.max_elements:
                raise self._refuse("tensor elements", total, self.max_elements, "max_elements")
        if self.max_pixels is not None:
            skip = 1 if self._batched else 0
            for name, arr in inputs.items():
                var = self._variable.get(name)
                if var:
                    shape = arr.shape[skip:]
                    px = 1
                    for i in var:
                        px *= shape[i]
                    if px > self.max_pixels:
                        raise self._refuse("pixels per row (variable dimensions multiplied)", px, self.max_pixels, "max_pixels", name)
        if self.max_text_bytes is not None and self._text is not None:
            arr = inputs.get(self._text)
            if arr is not None:
                n = sum(len(v) if isinstance(v, (bytes, str)) else 0 for v in arr.reshape(-1))
                if n > self.max_text_bytes:
                    raise self._refuse("bytes of text", n, self.max_text_bytes, "max_text_bytes", self._text)

    def check_tokens(self, feeds: Dict[str, np.ndarray]) -> None:
        """Tokens of a tokenized request (attention_mask ones), against max_tokens."""
        if self.max_tokens is not None:
            n = int(feeds["attention_mask"].sum())
            if n > self.max_tokens:
                raise self._refuse("tokens", n, self.max_tokens, "max_tokens", self._text)


def input_limits(spec: ModelSpec, model: str, batched: bool) -> Optional[InputLimits]:
    """The checker for ``spec``'s limits, or None when it sets none (the fast path then checks nothing)."""
    lim = spec.limits
    if lim.max_elements is None and lim.max_pixels is None and lim.max_text_bytes is None and lim.max_tokens is None:
        return None
    return InputLimits(spec, model, batched)
