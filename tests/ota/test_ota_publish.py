import json

import numpy as np
import pytest
import yaml

from edge_agent.ota import golden
from edge_agent.ota.cli import main as cli_main
from edge_agent.ota.errors import GoldenRunnerMissing, ManifestInvalid, PublishError
from edge_agent.ota.manifest import Manifest, RegistryIndex
from edge_agent.digests import sha256_file
from edge_agent.ota.publish import publish, set_channel
from edge_agent.ota.signing import load_public_key, verify


def test_publish_writes_signed_version_and_index(src_models, registry, keys):
    m = publish(src_models("1"), registry, keys[0], channel="stable")
    vdir = registry / "linear" / "1"
    body = (vdir / "manifest.json").read_bytes()
    verify(body, (vdir / "manifest.json.sig").read_bytes(), [load_public_key(keys[1])])
    parsed = Manifest.parse(body)
    assert parsed == m
    assert {a.path for a in m.artifacts} == {"model.onnx", "model.yaml", "golden.npz"}
    for a in m.artifacts:
        assert sha256_file(vdir / a.path) == a.sha256 and (vdir / a.path).stat().st_size == a.size
    assert m.io.max_batch_size == 8 and m.io.inputs[0].dims == [4]
    assert m.lineage.source_model_digest == "0" * 64
    assert m.lineage.quantization_recipe == {"method": "none"}
    assert m.lineage.details == {"trained_on": "synthetic"}
    index = RegistryIndex.parse((registry / "linear" / "index.json").read_bytes())
    assert index.channels == {"stable": "1"} and [e.version for e in index.versions] == ["1"]
    # No hidden temp dir left behind.
    assert sorted(p.name for p in (registry / "linear").iterdir()) == ["1", "index.json"]


def test_golden_outputs_are_the_models_answers(src_models, registry, keys):
    m = publish(src_models("1"), registry, keys[0])
    cases = golden.load(registry / "linear" / "1" / "golden.npz", m.golden, ["x"])
    assert len(cases) == m.golden.cases == 2
    runner = golden.OrtRunner(registry / "linear" / "1", None)
    for ins, outs in cases:
        assert ins["x"].shape == (2, 4)  # batch axis added because max_batch_size > 0
        np.testing.assert_allclose(runner(ins)["y"], outs["y"], rtol=1e-6)
    # Deterministic inputs: a second model gets the very same golden inputs.
    m2 = publish(src_models("2", seed=5), registry, keys[0])
    cases2 = golden.load(registry / "linear" / "2" / "golden.npz", m2.golden, ["x"])
    np.testing.assert_array_equal(cases[0][0]["x"], cases2[0][0]["x"])
    assert not np.allclose(cases[0][1]["y"], cases2[0][1]["y"])


def test_versions_are_immutable_and_channels_move(src_models, registry, keys):
    publish(src_models("1"), registry, keys[0], channel="stable")
    with pytest.raises(PublishError) as e:
        publish(src_models("1"), registry, keys[0])
    assert e.value.code == "publish_failed"
    publish(src_models("2", seed=1), registry, keys[0], channel="canary")
    index = set_channel(registry, "linear", "stable", "2")
    assert index.channels == {"stable": "2", "canary": "2"}
    with pytest.raises(PublishError):
        set_channel(registry, "linear", "stable", "9")


def test_manifest_schema_forbids_unknown_keys_and_bad_paths(src_models, registry, keys):
    publish(src_models("1"), registry, keys[0])
    raw = json.loads((registry / "linear" / "1" / "manifest.json").read_bytes())
    with pytest.raises(ManifestInvalid, match="surprise: Extra inputs"):
        Manifest.parse(json.dumps({**raw, "surprise": 1}).encode())
    raw["artifacts"][0]["path"] = "../../etc/passwd"
    with pytest.raises(ManifestInvalid, match="artifacts.0.path"):
        Manifest.parse(json.dumps(raw).encode())
    with pytest.raises(ManifestInvalid):
        Manifest.parse(b"\x00not json")


def test_text_model_needs_a_pipeline_runner(tmp_path, src_models, registry, keys):
    vdir = src_models("1")
    spec = yaml.safe_load((vdir / "model.yaml").read_text())
    spec["inputs"] = [{"name": "text", "datatype": "BYTES", "dims": [1]}]
    spec["outputs"] = [{"name": "embedding", "datatype": "FP32", "dims": [3]}]
    spec["text"] = {"output": "embedding"}
    (vdir / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(GoldenRunnerMissing):
        publish(vdir, registry, keys[0])
    assert not (registry / "linear" / "1").exists()

    seen = []

    def factory(version_dir, model_spec):
        def run(inputs):
            seen.append(inputs["text"])
            n = inputs["text"].shape[0]
            return {"embedding": np.ones((n, 3), np.float32)}
        return run

    m = publish(vdir, registry, keys[0], runner_factory=factory)
    assert m.golden.runner == "pipeline"
    assert all(isinstance(x, bytes) for x in seen[0].ravel())
    cases = golden.load(registry / "linear" / "1" / "golden.npz", m.golden, ["text"])
    assert cases[0][0]["text"].dtype == object and cases[0][0]["text"][0, 0] in golden.GOLDEN_TEXTS


def test_cli_keygen_publish(tmp_path, src_models, capsys):
    assert cli_main(["registry", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert cli_main(["registry", "keygen", "--out", str(tmp_path / "k")]) == 1
    root = tmp_path / "reg"
    rc = cli_main(["registry", "publish", str(src_models("7")), "--root", str(root),
                   "--key", str(tmp_path / "k" / "ota_signing_key.pem"), "--channel", "canary"])
    assert rc == 0
    assert json.loads((root / "linear" / "index.json").read_text())["channels"] == {"canary": "7"}
    rc = cli_main(["registry", "publish", str(tmp_path / "nope"), "--root", str(root),
                   "--key", str(tmp_path / "k" / "ota_signing_key.pem")])
    assert rc == 1 and "publish_failed" in capsys.readouterr().err
