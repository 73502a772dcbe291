"""OTA golden checks of an image model (model.yaml image:): publish draws encoded images the
model's limits accept (random bytes would all be refused, checking nothing), the daemon's own
path computes and re-checks the golden answers, and the raw ONNX Runtime runner is refused."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import Config
from edge_agent.ota import golden
from edge_agent.ota.errors import GoldenMismatch, GoldenRunnerMissing
from edge_agent.ota.publish import publish
from edge_agent.runtime.model_spec import load_model_spec
from edge_agent.vision.image import decode
from detect_models import detector_model
from image_files import digits_image_model


def test_golden_inputs_are_images_the_model_takes(tmp_path):
    spec = load_model_spec(digits_image_model(tmp_path / "src") / "model.yaml")
    cases = golden.make_inputs(spec)
    assert len(cases) == 2 and cases[0]["image"].shape == (2, 1)
    imgs = [decode(b, spec.image) for case in cases for b in case["image"].ravel()]
    assert all(i.shape == (64, 64, 3) for i in imgs)
    assert len({i.tobytes() for i in imgs}) == 4  # noise, not one picture four times
    again = golden.make_inputs(spec)  # reproducible: the same seed draws the same files
    assert again[1]["image"][1, 0] == cases[1]["image"][1, 0]


def test_publish_and_check_through_the_daemons_image_path(tmp_path, registry, keys):
    vdir = digits_image_model(tmp_path / "src")
    spec = load_model_spec(vdir / "model.yaml")
    with pytest.raises(GoldenRunnerMissing, match="image model"):
        publish(vdir, registry, keys[0])
    factory = golden.pipeline_runner_factory(lambda: Config(paths={"state_dir": tmp_path / "state"}))
    m = publish(vdir, registry, keys[0], runner_factory=factory)
    assert m.golden.runner == "pipeline" and "probabilities" in m.golden.outputs
    cases = golden.load(registry / "digits-image" / "1" / "golden.npz", m.golden, ["image"])
    runner = factory(registry / "digits-image" / "1", spec)
    golden.check(runner, cases, m.golden)
    # A golden answer the model does not give is caught.
    cases[0][1]["probabilities"] = np.roll(cases[0][1]["probabilities"], 1, axis=-1)
    with pytest.raises(GoldenMismatch):
        golden.check(runner, cases, m.golden)


def test_a_detector_publishes_one_image_per_golden_case(tmp_path, registry, keys):
    """A detector answers one image per request (image.detect): golden inputs hold one, and
    its golden answers are the boxes, scores, classes and labels, re-checked on the daemon's path."""
    vdir = detector_model(tmp_path / "src" / "det" / "1")
    spec = load_model_spec(vdir / "model.yaml")
    assert [c["image"].shape for c in golden.make_inputs(spec)] == [(1, 1), (1, 1)]
    factory = golden.pipeline_runner_factory(lambda: Config(paths={"state_dir": tmp_path / "state"}))
    m = publish(vdir, registry, keys[0], runner_factory=factory)
    assert m.golden.outputs == ["boxes", "scores", "classes", "labels"]
    cases = golden.load(registry / "det" / "1" / "golden.npz", m.golden, ["image"])
    assert cases[0][1]["boxes"].shape == (1, 4, 4) and cases[0][1]["labels"].ravel().tolist() == [b"cat", b"dog", b"dog", b"dog"]
    golden.check(factory(registry / "det" / "1", spec), cases, m.golden)
