"""The OCR pipeline's end-to-end helpers: a daemon serving ``ocr``, rendered images with
RapidOCR's own answers, and the comparison the must-shows of issue 18 make (text equal,
boxes within a few pixels)."""

from __future__ import annotations

import shutil
import socket
import struct
from pathlib import Path

import numpy as np
import orjson

import ocr_reference as ref

# How far a box corner may lie from RapidOCR's (pixels).
BOX_TOLERANCE_PX = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_ocr(build: Path, models_dir: Path, version: str = "1") -> Path:
    """Copy the built pipeline (ocr_build fixture) as {models_dir}/ocr/{version}."""
    dest = models_dir / "ocr" / version
    shutil.copytree(build / "1", dest)
    return dest


def rendered_cases(count: int, seed: int) -> list:
    """``count`` (encoded bytes, RapidOCR's OcrResult) pairs: generated strings rendered in
    several fonts, sizes, slight rotations and noise (scripts/render_ocr_samples.py);
    every fourth one a JPEG, the others PNG. RapidOCR reads the same bytes."""
    import cv2

    out = []
    for i, (img, _lines) in enumerate(ref.rendered(count, seed)):
        ext, opts = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 92]) if i % 4 == 3 else (".png", [])
        data = cv2.imencode(ext, img, opts)[1].tobytes()
        out.append((data, ref.run(data)))
    return out


def bytes_body(data: bytes, outputs=None, parameters=None) -> tuple[bytes, dict]:
    """A KServe v2 request with one BYTES input ``image`` in the binary tensor extension
    (4-byte little-endian length + bytes, as tritonclient sends it); answers in JSON."""
    raw = struct.pack("<I", len(data)) + data
    head = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    if outputs:
        head["outputs"] = [{"name": o} for o in outputs]
    if parameters:
        head["parameters"] = parameters
    h = orjson.dumps(head)
    return h + raw, {"Inference-Header-Content-Length": str(len(h)), "Content-Type": "application/octet-stream"}


def infer_bytes(client, data: bytes, version: str | None = None, parameters=None) -> tuple[int, dict]:
    body, headers = bytes_body(data, parameters=parameters)
    url = "/v2/models/ocr" + (f"/versions/{version}" if version else "") + "/infer"
    status, hdrs, raw = client.request("POST", url, body, headers)
    hl = hdrs.get("Inference-Header-Content-Length")
    return status, orjson.loads(raw[: int(hl)] if hl else raw)


def outputs_of(doc: dict) -> dict:
    """A JSON answer's outputs: text as str list, boxes (n,4,2) and scores (n,) as arrays."""
    outs = {o["name"]: o for o in doc["outputs"]}
    text = [t if isinstance(t, str) else bytes(t).decode() for t in outs["text"]["data"]]
    n = len(text)
    boxes = np.asarray(outs["boxes"]["data"], np.float32).reshape(n, 4, 2)
    return {"text": text, "boxes": boxes, "scores": np.asarray(outs["scores"]["data"], np.float32)}


def differences(got_text: list, got_boxes: np.ndarray, want) -> str | None:
    """Why an answer is not RapidOCR's (None when texts are equal and boxes within tolerance)."""
    if list(got_text) != list(want.texts):
        return f"text {got_text} != RapidOCR's {want.texts}"
    if len(want.texts):
        d = float(np.abs(np.asarray(got_boxes, np.float32) - want.boxes).max())
        if d > BOX_TOLERANCE_PX:
            return f"boxes differ by {d:.1f} px (tolerance {BOX_TOLERANCE_PX})"
    return None
