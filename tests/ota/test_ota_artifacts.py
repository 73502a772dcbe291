"""OTA for versions with several ONNX files (model.yaml ``artifacts``): validation runs the file THIS device serves.

The second file of each version has other weights than model.onnx (the file
the golden outputs come from), so validating the wrong file shows.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from edge_agent.errors import ModelLoadError
from edge_agent.ota.errors import GoldenMismatch, PublishError
from edge_agent.ota.manifest import Manifest, Tolerance
from edge_agent.ota.publish import publish
from edge_agent.ota.statemachine import State
from edge_agent.ota.updater import Updater
from edge_agent.ota.validate import validate_version
from edge_agent.ota.versions import Pointers, write_pointers
from edge_agent.runtime.cpu import KNOWN_FEATURES, parse_cpuinfo, this_cpu

NO_FLAGS = parse_cpuinfo("", machine="x86_64")


def flag_here() -> str:
    have = sorted(KNOWN_FEATURES & this_cpu().flags)
    if not have:
        pytest.skip("this CPU reports none of the features model.yaml can require")
    return have[0]


def with_second_file(vdir, weights, requires, name="model.fast.onnx"):
    """Add ``name`` = model.onnx with W replaced by ``weights(W)``, declared before the default."""
    m = onnx.load(str(vdir / "model.onnx"))
    w = next(i for i in m.graph.initializer if i.name == "W")
    w.CopyFrom(numpy_helper.from_array(weights(numpy_helper.to_array(w)).astype(np.float32), "W"))
    onnx.save(m, str(vdir / name))
    spec = yaml.safe_load((vdir / "model.yaml").read_text())
    spec["artifacts"] = [{"file": name, "requires": requires, "target": "fast"}, {"file": "model.onnx"}]
    (vdir / "model.yaml").write_text(yaml.safe_dump(spec))
    return vdir


def staged(registry, manifest, tmp_path):
    vdir = tmp_path / "device" / manifest.version
    shutil.copytree(registry / manifest.model / manifest.version, vdir)
    return vdir


def test_validation_runs_the_file_this_device_serves(src_models, registry, keys, tmp_path):
    vdir = with_second_file(src_models("2"), lambda w: -w, [flag_here()])
    m = publish(vdir, registry, keys[0])
    assert {a.path for a in m.artifacts} == {"model.onnx", "model.fast.onnx", "model.yaml", "golden.npz"}
    # The second file is judged with the default tolerance of its precision (fp32 here).
    assert m.golden.artifact_tolerance == {"model.fast.onnx": {"y": Tolerance()}}
    staged_dir = staged(registry, m, tmp_path)
    with pytest.raises(GoldenMismatch, match=r"case 0, output 'y' \(model.fast.onnx\)"):
        validate_version(staged_dir, m, None)  # this CPU picks model.fast.onnx, whose answers differ
    # A device without the feature serves model.onnx, and that reproduces the golden outputs.
    assert validate_version(staged_dir, m, None, cpu=NO_FLAGS).file == "model.onnx"


def test_golden_tolerance_per_artifact(src_models, registry, keys, tmp_path):
    noise = np.random.default_rng(3).normal(0, 0.02, (4, 3))
    vdir = with_second_file(src_models("2"), lambda w: w + noise, [flag_here()])
    strict = publish(vdir, registry, keys[0])
    with pytest.raises(GoldenMismatch, match="model.fast.onnx"):
        validate_version(staged(registry, strict, tmp_path), strict, None)
    shutil.rmtree(registry / "linear")
    shutil.rmtree(tmp_path / "device")
    lenient = publish(vdir, registry, keys[0], artifact_tolerance={"model.fast.onnx": Tolerance(kind="cosine", min_cosine=0.99)})
    assert lenient.golden.tolerance["y"] == Tolerance()  # model.onnx stays strict
    choice = validate_version(staged(registry, lenient, tmp_path), lenient, None)
    assert (choice.file, choice.target) == ("model.fast.onnx", "fast")
    assert Manifest.parse(lenient.to_bytes()).golden.tolerance_for("model.fast.onnx")["y"].kind == "cosine"


def test_publish_refuses_files_that_do_not_fit(src_models, registry, keys):
    vdir = with_second_file(src_models("2"), lambda w: w, ["avx2"])
    (vdir / "model.fast.onnx").unlink()
    with pytest.raises(PublishError, match="model.fast.onnx: missing"):
        publish(vdir, registry, keys[0])
    wide = src_models("3", in_dim=5)
    shutil.copy(wide / "model.onnx", vdir / "model.fast.onnx")
    with pytest.raises(PublishError, match=r"artifact model.fast.onnx has other inputs/outputs than model.onnx: "
                                           r"input 'x': tensor\(float\) \['\?', 4\] in model.onnx, tensor\(float\) \['\?', 5\] in model.fast.onnx"):
        publish(vdir, registry, keys[0])
    with_second_file(vdir, lambda w: w, ["avx2"])
    with pytest.raises(PublishError, match="does not declare"):
        publish(vdir, registry, keys[0], artifact_tolerance={"model.other.onnx": Tolerance()})
    assert not (registry / "linear" / "2").exists()


def test_staged_version_missing_a_declared_file_fails_validation(src_models, registry, keys, tmp_path):
    m = publish(with_second_file(src_models("2"), lambda w: w, ["avx2"]), registry, keys[0])
    vdir = staged(registry, m, tmp_path)
    (vdir / "model.fast.onnx").unlink()
    with pytest.raises(ModelLoadError, match="model.fast.onnx: missing"):
        validate_version(vdir, m, None, cpu=NO_FLAGS)  # even where that file would not be served


def test_updater_promotes_a_two_file_version_validated_on_the_file_served_here(src_models, registry, keys, device, devserver):
    publish(src_models("1"), registry, keys[0], channel="stable")
    shutil.copytree(registry / "linear" / "1", device / "models" / "linear" / "1")
    write_pointers(device / "state", "linear", Pointers(active="1"))
    publish(with_second_file(src_models("2", seed=1), lambda w: w, [flag_here()]), registry, keys[0], channel="stable")
    upd = Updater("linear", registry_url=devserver.url, models_dir=device / "models", state_dir=device / "state",
                  public_keys=[keys[1]], backoff_s=(0.01, 0.05), providers=["cpu"])
    assert upd.check() == "2"
    assert upd.advance() is State.ACTIVE
    validated = next(h for h in upd.record.history if h.state is State.CANARY)
    assert validated.reason == "loads, IO signature matches, golden outputs reproduced by model.fast.onnx, the file this device serves"
    assert (device / "models" / "linear" / "2" / "model.fast.onnx").is_file()
