#!/usr/bin/env python3
"""Build the OCR demo (issue 18): PP-OCRv4 text detection, the angle classifier and text
recognition from the installed rapidocr-onnxruntime 1.4.4 wheel, as one pipeline version.

    scripts/build_ocr.py [--out DIR] [--force] [--no-progress] [--check-samples]

writes DIR/ocr/1/ (default DIR: .cache, the shared model cache ~/.cache/edge-agent):
    det.onnx   ch_PP-OCRv4_det_infer.onnx       (DBNet, input x [N,3,H,W])
    cls.onnx   ch_ppocr_mobile_v2.0_cls_infer.onnx (0°/180°, [N,3,48,192])
    rec.onnx   ch_PP-OCRv4_rec_infer.onnx       (CTC over 6,625 classes, [N,3,48,W]; its
               character list stays in the model's metadata, read by vision/ctc.py)
    model.yaml the pipeline (det -> crops -> cls -> rec) with RapidOCR 1.4.4's parameters
               (its schema is the pipeline package's; the pipeline may tune the batching keys)
Never committed (models are build outputs). Idempotent: a build of the same recipe and the
same wheel files is kept. Built into a temporary folder, renamed into place at the end, so a
half-built version is never served. --check-samples also runs RapidOCR on the committed
samples (models/ocr-samples/) and prints how many it reads exactly.

rapidocr-onnxruntime is a build/dev dependency (setup.py extras build, dev), never a
runtime one: pip install --no-deps rapidocr-onnxruntime==1.4.4 (docs/INSTALL.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAME = "ocr"
WHEEL = "rapidocr-onnxruntime"
WHEEL_VERSION = "1.4.4"
GRAPHS = {"det.onnx": "ch_PP-OCRv4_det_infer.onnx", "cls.onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "rec.onnx": "ch_PP-OCRv4_rec_infer.onnx"}
# Bump when model_yaml() or the copied files change.
RECIPE = {"format": 1, "wheel": f"{WHEEL}=={WHEEL_VERSION}", "graphs": GRAPHS}


def model_yaml() -> dict:
    """The pipeline version's model.yaml (the schema of the pipeline package, model.yaml `pipeline:`).
    Parameters are RapidOCR 1.4.4's config.yaml defaults."""
    return {
        "name": NAME,
        "inputs": [{"name": "image", "datatype": "BYTES", "dims": [1]}],
        "outputs": [{"name": "text", "datatype": "BYTES", "dims": [-1]},
                    {"name": "boxes", "datatype": "FP32", "dims": [-1, 4, 2]},
                    {"name": "scores", "datatype": "FP32", "dims": [-1]}],
        "max_batch_size": 0,
        # Decoding limits (vision/image.py); RapidOCR itself scales anything over 2000 px down.
        "image": {"max_bytes": 8 << 20, "max_pixels": 16_000_000},
        "pipeline": [
            {"name": "det", "model": "det.onnx", "input": "image", "op": "db",
             "params": {"limit_side_len": 736, "limit_type": "min", "thresh": 0.3, "box_thresh": 0.5,
                        "max_candidates": 1000, "unclip_ratio": 1.6, "use_dilation": True, "score_mode": "fast",
                        "limits": {"max_side": 2000, "min_side": 30, "min_height": 30, "max_ratio": 8}},
             "batching": {"max_batch_size": 4, "instances": 2, "intra_op_num_threads": 2}},
            {"name": "cls", "model": "cls.onnx", "input": "crops", "op": "angle",
             "params": {"height": 48, "width": 192, "threshold": 0.9},
             "batching": {"max_batch_size": 32, "instances": 1, "intra_op_num_threads": 1}},
            {"name": "rec", "model": "rec.onnx", "input": "crops", "op": "ctc",
             "params": {"height": 48, "min_width": 320, "text_score": 0.5},
             "batching": {"max_batch_size": 16, "instances": 1, "intra_op_num_threads": 2}},
        ],
    }


def wheel_models() -> Path:
    """The installed wheel's models/ folder, found without importing RapidOCR."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"build_ocr: {WHEEL} is not installed: pip install --no-deps {WHEEL}=={WHEEL_VERSION}")
    from importlib.metadata import version

    if version(WHEEL) != WHEEL_VERSION:
        sys.exit(f"build_ocr: {WHEEL} {version(WHEEL)} installed; this build is for {WHEEL_VERSION}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def check_graphs(folder: Path) -> dict:
    """Open each graph with ONNX Runtime (a file that does not load fails the build, not the
    daemon) and read what the pipeline relies on: input names and the rec character list."""
    import onnxruntime as ort

    out = {}
    for name in GRAPHS:
        sess = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        out[name] = {"input": sess.get_inputs()[0].name, "shape": [d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape]}
        if name == "rec.onnx":
            chars = sess.get_modelmeta().custom_metadata_map.get("character", "")
            if not chars:
                sys.exit("build_ocr: rec.onnx has no `character` metadata")
            out[name]["characters"] = len(chars.splitlines())
    return out


def build(dest: Path, progress: bool) -> None:
    from tqdm import tqdm

    import yaml
    from edge_agent.atomic import atomic_write
    from edge_agent.digests import sha256_file

    src = wheel_models()
    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, source in tqdm(GRAPHS.items(), desc="copy graphs", disable=not progress):
            shutil.copyfile(src / source, tmp / name)
        checked = check_graphs(tmp)
        spec = model_yaml()
        spec["lineage"] = {"source": f"pypi:{WHEEL}=={WHEEL_VERSION}",
                           "source_files": {n: {"file": s, "sha256": sha256_file(tmp / n)} for n, s in GRAPHS.items()},
                           "recipe": {"build": "scripts/build_ocr.py", **checked}}
        atomic_write(tmp / "model.yaml", yaml.safe_dump(spec, sort_keys=False))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_samples(progress: bool) -> int:
    """RapidOCR on the committed samples: how many it reads exactly (spaces ignored: it may
    split a line into word boxes)."""
    from tqdm import tqdm

    from rapidocr_onnxruntime import RapidOCR

    folder = REPO / "models" / "ocr-samples"
    truth = json.loads((folder / "truth.json").read_text())
    engine, ok = RapidOCR(), 0
    for name, lines in tqdm(sorted(truth.items()), desc="RapidOCR on samples", disable=not progress):
        res, _ = engine(str(folder / name))
        got = "".join(r[1] for r in res or []).replace(" ", "")
        ok += got == "".join(lines).replace(" ", "")
    print(f"RapidOCR reads {ok}/{len(truth)} committed samples exactly")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".cache", help="output root; the version goes to OUT/ocr/1")
    ap.add_argument("--force", action="store_true", help="rebuild even if a build of this recipe exists")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--check-samples", action="store_true", help="also run RapidOCR on models/ocr-samples/")
    args = ap.parse_args(argv)
    dest = args.out / NAME / "1"
    stamp = args.out / NAME / ".build.json"
    recipe = dict(RECIPE, model_yaml=model_yaml())
    if not args.force and (dest / "model.yaml").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == recipe \
            and all((dest / n).is_file() for n in GRAPHS):
        print(f"{dest}: already built (recipe unchanged); --force rebuilds")
    else:
        build(dest, args.progress)
        from edge_agent.atomic import atomic_write_json

        atomic_write_json(stamp, recipe)
        print(f"built {dest}")
    if args.check_samples:
        check_samples(args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
