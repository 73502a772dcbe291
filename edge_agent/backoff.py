"""Retry delays: exponential backoff with equal jitter, the one formula of every retry loop.

Attempt 0 waits between ``lo/2`` and ``lo``; each further attempt doubles both
bounds, up to ``hi``. Half of each delay is fixed, so a retry never comes at
once; half is random, so a fleet that lost its registry or broker at the same
moment does not come back in lockstep. (Not "full jitter", which draws from
0 to the bound and may retry at once.) Used by OTA downloads
(``ota/download.py``) and MQTT reconnects.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, lo: float, hi: float) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
    bound = min(hi, lo * (2 ** min(attempt, 30)))  # the exponent's cap keeps the float finite
    return random.uniform(bound / 2, bound)
