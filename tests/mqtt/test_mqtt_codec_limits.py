"""Hostile bodies over a real mosquitto: the codec refuses them with a code,
so the MQTT transport answers them like any refusal (issue 15 items 2, 9:
huge shapes and deep nesting used to raise past the codec and get no answer)."""

from __future__ import annotations

import orjson
import pytest

from mqtt_helpers import body, mqtt_cfg

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def _binary_bytes(count: int) -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": [{"name": "x", "shape": [count], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 0}}]})
    return head, len(head)


async def test_hostile_sizes_and_nesting_are_answered_with_their_code(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix))
    client = await make_client("5")
    deep = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"BYTES","data":%s}]}' % (b"[" * 1000 + b'"a"' + b"]" * 1000)
    cases = [
        (*_binary_bytes(2**62), "invalid_input"),  # ValueError from numpy: no answer before
        (*_binary_bytes(10**8), "invalid_input"),  # 800 MB allocated before
        (deep, None, "invalid_input"),  # RecursionError: no answer before
        (orjson.dumps({"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP32", "data": [1.0]}]}), None,
         "malformed_request"),
    ]
    for payload, hl, code in cases:
        ans = await client.infer("tiny", payload, header_length=hl, timeout=10)
        assert ans.error_code == code, ans.doc
    # and the transport goes on serving
    ans = await client.infer("tiny", body([[1, 2, 3, 4]]), timeout=10)
    assert ans.error_code is None
    assert service.calls == 1
