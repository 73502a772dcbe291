"""scripts/build_ocr.py: the OCR pipeline version from the rapidocr-onnxruntime wheel, with
RapidOCR's own parameters in model.yaml, built atomically and only once per recipe."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon_proc import REPO

rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime==1.4.4 (extras dev) not installed")
WHEEL = Path(rapidocr.__file__).parent


def build(out: Path, *extra: str) -> str:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "build_ocr.py"), "--out", str(out), "--no-progress", *extra],
                          check=True, capture_output=True, text=True, timeout=300, cwd=REPO).stdout


def test_build_copies_the_wheels_graphs_with_rapidocrs_parameters(tmp_path):
    assert "built" in build(tmp_path)
    version = tmp_path / "ocr" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["cls.onnx", "det.onnx", "model.yaml", "rec.onnx"]
    spec = yaml.safe_load((version / "model.yaml").read_text())
    for step in spec["pipeline"]:
        got = hashlib.sha256((version / step["model"]).read_bytes()).hexdigest()
        src = spec["lineage"]["source_files"][step["model"]]
        assert got == src["sha256"] == hashlib.sha256((WHEEL / "models" / src["file"]).read_bytes()).hexdigest()
    cfg = yaml.safe_load((WHEEL / "config.yaml").read_text())
    det, cls, rec = (s["params"] for s in spec["pipeline"])
    for key in ("limit_side_len", "limit_type", "thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode"):
        assert det[key] == cfg["Det"][key], key
    g = cfg["Global"]
    assert det["limits"] == {"max_side": g["max_side_len"], "min_side": g["min_side_len"], "min_height": g["min_height"],
                             "max_ratio": g["width_height_ratio"]}
    assert [3, cls["height"], cls["width"]] == cfg["Cls"]["cls_image_shape"] and cls["threshold"] == cfg["Cls"]["cls_thresh"]
    assert [3, rec["height"], rec["min_width"]] == cfg["Rec"]["rec_img_shape"] and rec["text_score"] == g["text_score"]
    assert spec["lineage"]["recipe"]["rec.onnx"]["characters"] == 6623


def test_second_build_is_kept_and_force_rebuilds(tmp_path):
    build(tmp_path)
    det = tmp_path / "ocr" / "1" / "det.onnx"
    before = det.stat().st_mtime_ns
    assert "already built" in build(tmp_path)
    assert det.stat().st_mtime_ns == before
    (tmp_path / "ocr" / "1" / "rec.onnx").unlink()          # a damaged build is rebuilt
    assert build(tmp_path).startswith("built") and (tmp_path / "ocr" / "1" / "rec.onnx").is_file()
    assert build(tmp_path, "--force").startswith("built")
    assert not list((tmp_path / "ocr").glob(".*partial"))
