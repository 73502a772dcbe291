"""Log lines cannot be forged: messages are escaped at the formatter (issue 15, item 11)."""

from __future__ import annotations

import io
import logging

import numpy as np
import orjson
import pytest

from daemon_proc import copy_digits, digits_body
from edge_agent.ops.logsetup import escape_controls, setup_logging


@pytest.mark.parametrize("raw,escaped", [
    ("plain text, ünïcödé and 'quotes'", "plain text, ünïcödé and 'quotes'"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("nul\x00 esc\x1b[31m del\x7f", "nul\\x00 esc\\x1b[31m del\\x7f"),
    ("nel\x85 ls\u2028 ps\u2029", "nel\\x85 ls\\u2028 ps\\u2029"),
])
def test_escape_controls(raw, escaped):
    assert escape_controls(raw) == escaped


@pytest.fixture
def captured():
    """setup_logging(level, json_format) -> a buffer its handler writes to; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def setup(level: str, json_format: bool = False) -> io.StringIO:
        setup_logging(level, json_format)
        buf = io.StringIO()
        root.handlers[0].setStream(buf)  # the handler writes to sys.stderr, which pytest swaps per phase
        return buf

    yield setup
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


FORGED = "evil\nERROR edge_agent.daemon: forged\u2028ERROR x: y"


def test_text_format_keeps_one_line_per_message_and_tracebacks_whole(captured):
    buf = captured("INFO")
    log = logging.getLogger("edge_agent.test")
    log.warning("infer %s: unknown_model", FORGED)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed for %s", "a\nb")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "WARNING edge_agent.test: infer evil\\nERROR edge_agent.daemon: forged\\u2028ERROR x: y: unknown_model"
    assert lines[1] == "ERROR edge_agent.test: failed for a\\nb"
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"
    assert not any(line.startswith("ERROR edge_agent.daemon") for line in lines)


def test_json_format_escapes_the_message_the_same_way(captured):
    buf = captured("INFO", json_format=True)
    logging.getLogger("edge_agent.test").warning("infer %s", FORGED)
    out = buf.getvalue()
    assert out.count("\n") == 1 and "\u2028" not in out
    assert orjson.loads(out)["msg"] == "infer " + escape_controls(FORGED)


def test_a_newline_in_a_model_name_does_not_forge_a_daemon_log_line(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    c = a.client()
    body = orjson.dumps(digits_body(np.zeros((1, 64), np.float32)))
    status, _, body = c.request("POST", "/v2/models/evil%0AERROR%20edge_agent.daemon:%20forged/infer",
                                body, {"Content-Type": "application/json"})
    assert status == 404 and orjson.loads(body)["code"] == "unknown_model"
    status, _, _ = c.request("GET", "/v2/models/evil%0D%0AERROR%20edge_agent.daemon:%20forged2")
    assert status == 404
    c.close()
    a.stop()
    log = a.log()
    assert not [line for line in log.splitlines() if line.startswith("ERROR edge_agent.daemon: forged")]
    assert "evil\\nERROR edge_agent.daemon: forged" in log  # logged, escaped


def test_c1_controls_are_escaped_and_backslashes_doubled_where_anything_is():
    from edge_agent.ops.logsetup import escape_controls

    assert escape_controls("a\x9b31mred") == "a\\x9b31mred"  # CSI: terminals act on it
    assert escape_controls("sent \\n then\n") == "sent \\\\n then\\n"
    assert escape_controls("C:\\models\\digits") == "C:\\models\\digits"  # nothing to escape: left alone
