"""model.yaml ``pipeline:``: the rules a pipeline version must meet, each refused with the
file and line, and a pipeline folder is a version to discovery (no model.onnx)."""

from __future__ import annotations

import pytest
import yaml

from edge_agent.errors import ModelLoadError
from edge_agent.ota.versions import is_version_dir, list_versions
from edge_agent.runtime.model_spec import load_model_spec

STEPS = [
    {"name": "det", "model": "det.onnx", "input": "image", "op": "db"},
    {"name": "cls", "model": "cls.onnx", "input": "crops", "op": "angle"},
    {"name": "rec", "model": "rec.onnx", "input": "crops", "op": "ctc"},
]
BASE = {
    "inputs": [{"name": "image", "datatype": "BYTES", "dims": [1]}],
    "outputs": [{"name": "text", "datatype": "BYTES", "dims": [-1]}],
    "pipeline": STEPS,
}


def _write(tmp_path, doc: dict):
    d = tmp_path / "ocr" / "1"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return d


def test_a_pipeline_spec_loads_and_names_its_graphs(tmp_path):
    spec = load_model_spec(_write(tmp_path, BASE) / "model.yaml")
    assert [s.name for s in spec.pipeline] == ["det", "cls", "rec"]
    assert spec.artifact_files() == ["det.onnx", "cls.onnx", "rec.onnx"]
    assert spec.pipeline[2].batching.max_batch_size == 8


@pytest.mark.parametrize("change, message", [
    ({"max_batch_size": 4}, "max_batch_size must be 0"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "dims": [3]}]}, "exactly one BYTES input"),
    ({"pipeline": []}, "at least one step"),
    ({"pipeline": [STEPS[1], STEPS[0], STEPS[2]]}, "the first step reads the image"),
    ({"pipeline": [STEPS[0], {**STEPS[1], "op": "db"}, STEPS[2]]}, "only the first"),
    ({"pipeline": STEPS[:2]}, "last step must give the answer"),
    ({"pipeline": [STEPS[0], {**STEPS[1], "name": "det"}, STEPS[2]]}, "step names must be unique"),
    ({"pipeline": [STEPS[0], {**STEPS[1], "model": "../cls.onnx"}, STEPS[2]]}, "plain file name"),
    ({"pipeline": [STEPS[0], {**STEPS[1], "op": "sharpen"}, STEPS[2]]}, r"model.yaml:\d+: pipeline\[1\].op: Input should be"),
    ({"image": {"detect": {"output": "x", "num_classes": 2}}}, "image.detect is for single-graph models"),
])
def test_broken_pipelines_are_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model_spec(_write(tmp_path, {**BASE, **change}) / "model.yaml")


def test_a_pipeline_folder_is_a_version_without_model_onnx(tmp_path):
    d = _write(tmp_path, BASE)
    assert is_version_dir(d) and list_versions(tmp_path, "ocr") == ["1"]
    (d / "model.yaml").write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "pipeline"}))
    assert not is_version_dir(d) and list_versions(tmp_path, "ocr") == []
