"""runtime/image_model.py on a real ONNX Runtime session: a tiny graph whose ``box`` output is a
fixed box in tensor pixels, so what comes back shows the decode -> pre-process -> run -> map-back
path row by row (each row by its own Transform), a refused image failing only its request, and
rows of different tensor shapes (keep_ratio) run apart."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from edge_agent.config import Config
from edge_agent.errors import InvalidImage, ModelLoadError
from edge_agent.runtime.session import LoadedModel
from edge_agent.types import IMAGE_BODY, InferRequest
from image_files import encode

BOX = [0.0, 8.0, 32.0, 24.0]  # x1, y1, x2, y2 in the 32x32 tensor


def _graph(path) -> None:
    """box = sum(x) * 0 + BOX per row; width = the tensor's width per row."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    box = helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4])
    width = helper.make_tensor_value_info("width", TensorProto.INT64, ["N", 1])
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Flatten", ["s"], ["f"], axis=1),
        helper.make_node("Mul", ["f", "zero"], ["z"]),
        helper.make_node("Add", ["z", "const"], ["box"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["w"]),
        helper.make_node("Shape", ["x"], ["shape0"]),
        helper.make_node("Gather", ["shape0", "zero_i"], ["n"]),
        helper.make_node("Concat", ["n", "one_i"], ["target"], axis=0),
        helper.make_node("Expand", ["w", "target"], ["width"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("const", TensorProto.FLOAT, [1, 4], BOX),
        helper.make_tensor("three", TensorProto.INT64, [1], [3]),
        helper.make_tensor("zero_i", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one_i", TensorProto.INT64, [1], [1]),
    ]
    g = helper.make_graph(nodes, "boxes", [x], [box, width], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


def _model(tmp_path, resize: dict, **image) -> LoadedModel:
    d = tmp_path / "boxes" / "1"
    d.mkdir(parents=True)
    _graph(d / "model.onnx")
    spec = {
        "max_batch_size": 8,
        "inputs": [{"name": "image", "datatype": "BYTES", "dims": [1]}],
        "outputs": [{"name": "box", "datatype": "FP32", "dims": [4]}, {"name": "width", "datatype": "INT64", "dims": [1]}],
        "image": {"preprocess": {"resize": resize, "normalize": {"scale": 1 / 255}}, "to_original": [{"output": "box", "format": "xyxy"}],
                  **image},
    }
    (d / "model.yaml").write_text(yaml.safe_dump(spec))
    return LoadedModel("boxes", "1", d, Config().runtime, tmp_path / "state")


def _req(*images: bytes, body: bool = False) -> InferRequest:
    if body:
        return InferRequest(model="boxes", inputs={IMAGE_BODY: np.array(list(images), dtype=object)})
    arr = np.empty((len(images), 1), dtype=object)
    for i, b in enumerate(images):
        arr[i, 0] = b
    return InferRequest(model="boxes", inputs={"image": arr})


def _png(w: int, h: int) -> bytes:
    return encode(np.full((h, w, 3), 90, dtype=np.uint8))


LETTERBOX = {"mode": "letterbox", "height": 32, "width": 32}


def test_boxes_come_back_in_each_images_own_pixels(tmp_path):
    m = _model(tmp_path, LETTERBOX)
    m.warmup()
    wide, tall = m.prepare(_req(_png(64, 32), body=True)), m.prepare(_req(_png(32, 64)))
    bad = m.prepare(_req(b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
    out = m.run_batch([wide, bad, tall])
    # 64x32 -> 32x16 at y 8..24: the box is the whole image.
    np.testing.assert_allclose(out[0]["box"], [[0, 0, 64, 32]])
    assert isinstance(out[1], InvalidImage)
    # 32x64 -> 16x32 at x 8..24: the same tensor box, other original pixels.
    np.testing.assert_allclose(out[2]["box"], [[-16, 16, 48, 48]])


def test_rows_of_one_request_map_each_by_its_transform(tmp_path):
    m = _model(tmp_path, LETTERBOX)
    out = m.run_batch([m.prepare(_req(_png(64, 32), _png(32, 64), _png(32, 32)))])[0]
    np.testing.assert_allclose(out["box"], [[0, 0, 64, 32], [-16, 16, 48, 48], BOX])


def test_keep_ratio_shapes_run_as_separate_batches(tmp_path):
    m = _model(tmp_path, {"mode": "keep_ratio", "height": 32})
    a, b, c = (m.prepare(_req(_png(w, 16))) for w in (32, 64, 32))
    out = m.run_batch([a, b, c])
    assert [o["width"].tolist() for o in out] == [[[64]], [[128]], [[64]]]
    # A request whose own images resize to different widths is refused, alone.
    mixed = m.run_batch([m.prepare(_req(_png(32, 16), _png(64, 16))), a])
    assert "different shapes" in str(mixed[0]) and mixed[1]["width"].tolist() == [[64]]


def test_max_bytes_is_checked_before_queueing(tmp_path):
    m = _model(tmp_path, LETTERBOX, max_bytes=100)
    with pytest.raises(Exception) as e:
        m.prepare(_req(_png(64, 64)))
    assert e.value.code == "image_too_large"


def test_load_refuses_what_cannot_work(tmp_path):
    with pytest.raises(ModelLoadError, match="dtype"):
        _model(tmp_path / "a", LETTERBOX, preprocess={"resize": LETTERBOX, "dtype": "UINT8"})
    with pytest.raises(ModelLoadError, match="to_original"):
        _model(tmp_path / "b", LETTERBOX, to_original=[{"output": "nope"}])


@pytest.mark.parametrize("limits", [
    {"formats": ["jpeg"], "channels": [3]},
    {"formats": ["bmp"], "channels": [1]},
    {"formats": ["webp", "png"], "channels": [4], "max_pixels": 100},
    {"formats": ["png"], "max_side": 7},
])
def test_warm_up_image_meets_the_models_own_limits(limits):
    from edge_agent.runtime.image_model import warmup_image
    from edge_agent.vision.image import ImageLimits, decode

    lim = ImageLimits(**limits)
    img = decode(warmup_image(lim), lim)  # would raise if the limits refused it
    assert img.shape[0] <= min(64, lim.max_side) and img.shape[0] * img.shape[1] <= lim.max_pixels


def test_the_image_demo_serves_the_digits_graph_itself():
    """models/digits-image/1/model.onnx is a copy of the digits demo's (scripts/train_digits.py
    rebuilds that one): kept byte for byte the same, so both demos give one answer."""
    from daemon_proc import DIGITS
    from image_files import DIGITS_IMAGE

    assert (DIGITS_IMAGE / "model.onnx").read_bytes() == (DIGITS / "model.onnx").read_bytes()
    assert (DIGITS_IMAGE / "labels.txt").read_text() == (DIGITS / "labels.txt").read_text()


def test_a_group_whose_graph_run_fails_fails_alone(tmp_path):
    """Images batched by tensor shape: when the graph refuses one group's shape, that group's
    requests get the error and the others their answers. Before, the error escaped run_batch and
    the batcher ran every request again alone, decoding each image twice (hostile review)."""
    from edge_agent.errors import InferenceFailed

    m = _model(tmp_path, {"mode": "keep_ratio", "height": 32})
    a, b, c = (m.prepare(_req(_png(w, 16))) for w in (32, 64, 32))
    decoded = []
    tensors = m.image.tensors
    m.image.tensors = lambda x: decoded.append(1) or tensors(x)

    def run(members):
        if members[0].feeds[m.image.graph_input].shape[-1] == 128:
            raise InferenceFailed("the graph refuses width 128")
        return m._run_tensors(members)

    out = m.image.run_batch([a, b, c], run)
    assert isinstance(out[1], InferenceFailed)
    assert [o["width"].tolist() for o in (out[0], out[2])] == [[[64]], [[64]]]
    assert len(decoded) == 3
