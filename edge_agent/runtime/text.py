"""Text models: raw UTF-8 in, pooled embedding out, with no torch in the daemon.

Per request, ``prepare`` tokenizes the BYTES input with the ``tokenizers``
file shipped in the version directory and pads to the longest text of that
request. The batcher merges requests with ``pad_and_concat`` (padding the
sequence axis with zeros, masked out), and ``pool`` turns the graph's token
states back into one vector per row, using the attention mask so padding
never leaks into the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client import Counter
from tokenizers import Tokenizer

from ..errors import InvalidInput, InvalidText, ModelLoadError, SequenceTooLong
from .model_spec import TextSpec

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

TRUNCATED = Counter("edge_agent_text_truncated_total", "Texts cut to the model's max_length.", ["model"])
TOKENS = Counter("edge_agent_text_tokens_total", "Tokens produced by the daemon's tokenizer.", ["model"])


class TextPipeline:
    def __init__(self, spec: TextSpec, version_dir: Path, graph_inputs: Sequence[str] = TOKEN_INPUTS, model: str = "") -> None:
        self.spec = spec
        self.model = model
        unknown = [n for n in graph_inputs if n not in TOKEN_INPUTS]
        if unknown or "input_ids" not in graph_inputs:
            raise ModelLoadError(f"text model graph inputs {list(graph_inputs)}: expected input_ids plus any of {TOKEN_INPUTS[1:]}")
        self.graph_inputs = [n for n in TOKEN_INPUTS if n in graph_inputs]
        path = Path(version_dir) / spec.tokenizer
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type
            raise ModelLoadError(f"{path}: cannot load tokenizer: {e}") from None
        pad = (tok.padding or {}).get("pad_id")
        self.pad_id = int(pad) if pad is not None else int(tok.token_to_id("[PAD]") or 0)
        # Shipped tokenizer files often pin fixed-length padding/truncation;
        # padding is done here per request, truncation per model.yaml.
        tok.no_padding()
        tok.no_truncation()
        if spec.on_overflow == "truncate":
            tok.enable_truncation(spec.max_length)
        self._tok = tok

    # -- requests ----------------------------------------------------------

    def prepare(self, texts: np.ndarray, shape: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Token feeds for one request of ``n`` rows, one text per row."""
        arr = np.asarray(texts, dtype=object)
        shape = tuple(shape) if shape is not None else arr.shape
        n = shape[0] if shape else 1
        if arr.size != n:
            raise InvalidInput(f"input '{self.spec.input}': expected one text per row, got shape {list(shape)}")
        strings = [self._decode(v, i) for i, v in enumerate(arr.reshape(-1))]
        # encode_batch hands even one text to the tokenizers thread pool
        # (~12 us of cross-thread work); most requests carry one text.
        encs = [self._tok.encode(strings[0])] if n == 1 else self._tok.encode_batch(strings)
        if self.spec.on_overflow == "error":
            for i, e in enumerate(encs):
                if len(e.ids) > self.spec.max_length:
                    raise SequenceTooLong(
                        f"input '{self.spec.input}' row {i}: {len(e.ids)} tokens > max_length {self.spec.max_length}",
                        tokens=len(e.ids), max_length=self.spec.max_length,
                    )
        else:
            cut = sum(1 for e in encs if e.overflowing)
            if cut:
                TRUNCATED.labels(self.model).inc(cut)
        width = max(len(e.ids) for e in encs)
        ids = np.full((n, width), self.pad_id, np.int64)
        mask = np.zeros((n, width), np.int64)
        types = np.zeros((n, width), np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        TOKENS.labels(self.model).inc(int(mask.sum()))
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        # attention_mask is always kept: pooling needs it even if the graph does not.
        return {k: v for k, v in feeds.items() if k in self.graph_inputs or k == "attention_mask"}

    def graph_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The subset of ``feeds`` the graph takes."""
        return {k: feeds[k] for k in self.graph_inputs}

    def _decode(self, v, i: int) -> str:
        if isinstance(v, str):
            return v
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"input '{self.spec.input}' row {i}: expected BYTES, got {type(v).__name__}")
        try:
            return bytes(v).decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise InvalidText(f"input '{self.spec.input}' row {i}: not valid UTF-8 at byte {e.start}", row=i, byte=e.start) from None

    # -- batches -----------------------------------------------------------

    def pad_and_concat(self, feeds_list: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Merge several requests' feeds into one batch.

        The sequence axis is padded to the batch's longest with pad ids and
        mask 0: masked keys get no attention weight, so each row's token
        states, and hence its pooled embedding, stay what they were alone.
        """
        width = max(f["input_ids"].shape[1] for f in feeds_list)
        padded = [self.pad_to(f, width) for f in feeds_list]
        return {key: np.concatenate([p[key] for p in padded], axis=0) for key in padded[0]}

    def pad_to(self, feeds: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        """Token feeds padded on the sequence axis to ``width`` (pad id, mask 0)."""
        out = {}
        for key in TOKEN_INPUTS:
            if key in feeds:
                a = feeds[key]
                fill = self.pad_id if key == "input_ids" else 0
                out[key] = np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill) if a.shape[1] < width else a
        return out

    @staticmethod
    def split_rows(array: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
        """Cut a batch result back into per-request pieces."""
        return np.split(array, np.cumsum(counts)[:-1])

    def pool(self, graph_outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Token states [n, seq, dim] -> embeddings float32 [n, dim]."""
        try:
            h = np.asarray(graph_outputs[self.spec.graph_output], np.float32)
        except KeyError:
            raise ModelLoadError(f"graph has no output '{self.spec.graph_output}' (model.yaml text.graph_output)") from None
        if self.spec.pooling == "cls":
            v = h[:, 0, :]
        else:
            m = feeds["attention_mask"][:, : h.shape[1]].astype(np.float32)[:, :, None]
            # Same clamp as sentence-transformers' mean pooling.
            v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        if self.spec.normalize:
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v.astype(np.float32, copy=False)
