"""The canary judge: a new version's live answers compared with the active version's.

A window opens when the canary starts routing. Every finished request of the
model is counted for its side (canary = the new version, active = whatever
served the rest). The verdict waits until the canary has ``min_requests``
requests or ``max_seconds`` have passed, then:

- rollback when the canary's error rate exceeds the active's by more than
  ``max_error_rate_increase``;
- rollback when the canary's p99 latency exceeds ``max_p99_ratio`` x the
  active's p99 *and* the gap is above ``LATENCY_NOISE_S`` (on sub-millisecond
  models a single scheduler hiccup would otherwise fail a good version). Below
  ``P99_MIN_SAMPLES`` requests per side the p99 is just the maximum, i.e. one
  hiccup, so p90 stands in for it until the samples can carry a p99;
- promote otherwise, including a window that saw no canary traffic at all: the
  version already passed signature, digest, load and golden checks, and a device
  without traffic must not hold an update open forever.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

from ..config import CanaryConfig
from .intents import Verdict
LATENCY_NOISE_S = 0.002
P99_MIN_SAMPLES = 100
_MAX_SAMPLES = 20_000


class Side:
    """Counts and latencies of one side of the comparison."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=_MAX_SAMPLES)

    def observe(self, ok: bool, seconds: float) -> None:
        self.requests += 1
        if ok:
            self.latencies.append(seconds)
        else:
            self.errors += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        lat = sorted(self.latencies)
        return lat[max(0, math.ceil(q * len(lat)) - 1)]

    def summary(self) -> dict:
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 4),
                "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
                "p99_ms": round(p99 * 1000, 3) if p99 is not None else None}


class CanaryWindow:
    def __init__(self, model: str, version: str, active: str | None, cfg: CanaryConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model, self.version, self.active_version = model, version, active
        self.cfg = cfg
        self.clock = clock
        self.started = clock()
        self.canary = Side()
        self.active = Side()

    def observe(self, version: str, ok: bool, seconds: float) -> str:
        """Count one finished request; returns the side it was counted on."""
        if version == self.version:
            self.canary.observe(ok, seconds)
            return "canary"
        self.active.observe(ok, seconds)
        return "active"

    def elapsed(self) -> float:
        return self.clock() - self.started

    def verdict(self) -> tuple[Verdict, str]:
        cfg, c, a = self.cfg, self.canary, self.active
        elapsed = self.elapsed()
        if c.requests < cfg.min_requests and elapsed < cfg.max_seconds:
            return None, f"{c.requests}/{cfg.min_requests} canary requests after {elapsed:.1f}s"
        if c.requests == 0:
            return "promote", f"no canary traffic in {cfg.max_seconds:g}s; validation is the gate"
        seen = f"canary {c.requests} requests, active {a.requests}"
        if c.error_rate - a.error_rate > cfg.max_error_rate_increase:
            return "rollback", (f"error rate {c.error_rate:.1%} vs {a.error_rate:.1%} on active "
                                f"(allowed +{cfg.max_error_rate_increase:.1%}; {seen})")
        q = 0.99 if min(len(c.latencies), len(a.latencies)) >= P99_MIN_SAMPLES else 0.9
        name = "p99" if q == 0.99 else "p90 (too few samples for p99)"
        cp, ap = c.quantile(q), a.quantile(q)
        if cp is not None and ap is not None and cp > cfg.max_p99_ratio * ap and cp - ap > LATENCY_NOISE_S:
            return "rollback", (f"{name} latency {cp * 1000:.1f} ms vs {ap * 1000:.1f} ms on active "
                                f"(allowed x{cfg.max_p99_ratio:g}; {seen})")
        if cp is None:
            # Every canary request failed, and so did the active's (else the error rule fired).
            return "rollback", f"no successful canary request ({seen})"
        return "promote", (f"error rate {c.error_rate:.1%} vs {a.error_rate:.1%}, {name[:3]} {cp * 1000:.1f} ms vs "
                           f"{'-' if ap is None else f'{ap * 1000:.1f}'} ms ({seen})")

    def summary(self) -> dict:
        return {"version": self.version, "active": self.active_version, "elapsed_s": round(self.elapsed(), 1),
                "canary": self.canary.summary(), "active_side": self.active.summary()}
