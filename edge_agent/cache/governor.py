"""Per model: while its answers are not being reused, the cache looks up only a sample.

A cache costs every miss its look-up and its store (~10 us of event-loop
Python per request; on a small model that is a fifth of the request). Many
edge streams never repeat an input (camera frames, sensor readings), and
then that cost buys nothing.

The sample is the keys whose first byte is below 16: 1/16 of all keys
(they are uniform digests), chosen by key, so a repeated input is always in
it or always out of it. Sample keys are looked up and stored at all times,
so their hit ratio is the stream's, whatever the mode.

Every ``window`` requests a verdict:
  - looking up every request: stay so while the hits (all of them, or the
    sample's) reach ``min_hit_ratio``; else sample;
  - sampling: look every request up again once the sample's hits reach the
    bound, or once inputs outside the sample are seen to repeat that often.
    Those are caught by a 256-slot table of recent keys (one compare per
    request), so a hot input that happens to lie outside the sample brings
    the cache back too.
A ``min_hit_ratio`` of 0 never samples.

Unsampled requests still get the key, and with it single flight: identical
requests in flight together still share one inference.
"""

from __future__ import annotations

import logging

from . import metrics

log = logging.getLogger(__name__)

# Keys whose first byte is below this are in the sample: 16/256 = 1/16.
SAMPLE_CUT = 16
# A verdict needs this many sample look-ups: until then the window runs on
# (unless, while sampling, inputs outside the sample already repeat enough).
MIN_SAMPLE_LOOKUPS = 16


class Governor:
    __slots__ = ("model", "window", "min_hit_ratio", "sampling", "requests", "hits", "sample_lookups",
                 "sample_hits", "skipped", "repeats", "_recent", "_gauge")

    def __init__(self, model: str, window: int, min_hit_ratio: float) -> None:
        self.model = model
        self.window = window
        self.min_hit_ratio = min_hit_ratio
        self.sampling = False
        self._recent: list[bytes | None] = [None] * 256
        self._gauge = metrics.SAMPLING.labels(model)
        self._gauge.set(0)
        self._reset()

    def _reset(self) -> None:
        self.requests = self.hits = self.sample_lookups = self.sample_hits = self.skipped = self.repeats = 0

    def looks_up(self, key: bytes) -> bool:
        """Whether this request is looked up and stored (report its hit with ``hit``)."""
        if self.requests >= self.window:
            self._decide()
        self.requests += 1
        if key[0] < SAMPLE_CUT:
            self.sample_lookups += 1
            return True
        if not self.sampling:
            return True
        self.skipped += 1
        slot = key[1]
        if self._recent[slot] == key:
            self.repeats += 1
        else:
            self._recent[slot] = key
        return False

    def hit(self, key: bytes) -> None:
        """The look-up of ``key`` found an answer."""
        self.hits += 1
        if key[0] < SAMPLE_CUT:
            self.sample_hits += 1

    def _decide(self) -> None:
        bound = self.min_hit_ratio
        if self.sample_lookups < MIN_SAMPLE_LOOKUPS and not (self.sampling and self.repeats >= bound * self.skipped > 0):
            return  # too few sample look-ups to judge on: the window runs on
        sample = self.sample_hits / self.sample_lookups if self.sample_lookups else 0.0
        if self.skipped:
            metrics.SAMPLED_OUT.labels(self.model).inc(self.skipped)
        if not self.sampling:
            # Both must be low: right after sampling, inputs outside the
            # sample miss once more (they were not stored), the sample does not.
            if self.hits < bound * self.requests and sample < bound:
                self.sampling = True
                log.info("cache: %s: %d hits in %d requests; looking up a 1/16 sample until inputs repeat",
                         self.model, self.hits, self.requests)
        elif sample >= bound or self.repeats >= bound * max(1, self.skipped):
            self.sampling = False
            self._recent = [None] * 256
            log.info("cache: %s: inputs repeat (sample: %d hits in %d look-ups; %d repeats in %d other requests); "
                     "looking up every request again", self.model, self.sample_hits, self.sample_lookups,
                     self.repeats, self.skipped)
        self._gauge.set(1 if self.sampling else 0)
        self._reset()

    def close(self) -> None:
        """The model is gone: its series leave /metrics."""
        for family in (metrics.SAMPLING, metrics.SAMPLED_OUT):
            try:
                family.remove(self.model)
            except KeyError:  # never exported (no verdict yet)
                pass
