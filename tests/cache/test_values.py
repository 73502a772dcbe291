import numpy as np
import pytest

from edge_agent.cache.values import CorruptCacheValue, decode_outputs, encode_outputs

ALL = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "f16": np.array([1.5, -2.0], np.float16),
    "f64": np.linspace(0, 1, 5),
    "i8": np.array([-1, 2], np.int8),
    "i64": np.array([[1 << 40]], np.int64),
    "u16": np.array([65535], np.uint16),
    "b": np.array([True, False, True]),
    "scalar": np.array(7, np.int32),
    "empty": np.zeros((0, 3), np.float32),
    "bytes": np.array([[b"a", b""], [b"\x00\xff", b"longer one"]], dtype=object),
    "str": np.array(["cat", "dög"], dtype=object),
    "strided": np.arange(20, dtype=np.float32)[::4],
}


def test_round_trip_keeps_names_dtypes_shapes_and_values():
    out = decode_outputs(encode_outputs(ALL))
    assert list(out) == list(ALL)
    for name, arr in ALL.items():
        got = out[name]
        assert got.shape == arr.shape, name
        assert got.dtype == arr.dtype, name
        assert got.tolist() == arr.tolist(), name
    assert all(type(s) is str for s in out["str"].ravel())
    assert all(type(s) is bytes for s in out["bytes"].ravel())


def test_numeric_outputs_are_read_only_aligned_views():
    out = decode_outputs(encode_outputs(ALL))
    for name in ("f32", "f64", "i64"):
        assert not out[name].flags.writeable
        assert out[name].flags.aligned
    with pytest.raises(ValueError):
        out["f32"][0, 0] = 1


@pytest.mark.parametrize("where", [0, 9, 20, -3])
def test_a_flipped_byte_is_detected(where):
    blob = bytearray(encode_outputs(ALL))
    blob[where] ^= 0x40
    with pytest.raises(CorruptCacheValue):
        decode_outputs(bytes(blob))


@pytest.mark.parametrize("length", [0, 3, 11, 40])
def test_truncated_values_are_detected_even_without_the_checksum(length):
    blob = encode_outputs(ALL)[:length]
    with pytest.raises(CorruptCacheValue):
        decode_outputs(blob, verify=False)


def test_cache_value_corrupt_has_a_stable_code():
    assert CorruptCacheValue("x").code == "cache_value_corrupt"
