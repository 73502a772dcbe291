"""Logging to stderr (journald captures it), text or one JSON object a line.

Messages carry values that came from outside (model names from URLs, MQTT
topics, client ids, error texts quoting a request). A line break in one of
them would let a client write a line of its own into the log, e.g. a forged
``ERROR edge_agent.daemon: ...`` that a log shipper or an operator's grep takes
for the daemon's. So every message is escaped at the formatter, in one place,
whoever logged it: control characters and Unicode line breaks become visible
escapes (``\\n``, ``\\x1b``, ``\\u2028``). Tracebacks (exc_text) keep their lines.
"""

from __future__ import annotations

import logging
import re
import sys

import orjson

# C0 controls (tab and line feed included), DEL, the C1 controls (NEL, and
# CSI U+009B that terminals act upon), and the Unicode line and paragraph
# separators: everything a terminal, journald or a log viewer may break a
# line at or act upon. In a message that has anything escaped, backslashes
# are doubled too, so a sent "\\n" cannot pass for one of our escapes there.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPED = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_one(m: re.Match) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape_controls(text: str) -> str:
    """``text`` on one line, its control characters written as escapes.

    A message without any (nearly all of them) costs one regex scan."""
    if _CONTROLS.search(text) is None:
        return text
    return _ESCAPED.sub(_escape_one, text)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    # JSON strings escape control characters already; escaping the message
    # the same way as the text format keeps both formats saying the same,
    # and U+2028/U+2029 (legal raw in JSON) off any reader that breaks at them.
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": escape_controls(record.getMessage())}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str, json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(_JsonFormatter())
    else:
        # No timestamp: journald adds its own; under a terminal the order is enough.
        handler.setFormatter(_TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
