"""Per model: while its answers are not being reused, the cache looks up only a sample.

A cache costs every miss its key, its look-up, its single-flight entry and
its store (~10 us of event-loop Python per request; on a small model that is
a fifth of the request). Many edge streams never repeat an input (camera
frames, sensor readings), and then that cost buys nothing.

The sample is chosen by a cheap 32-bit CRC of the input values
(keys.input_fingerprint), computed for every request: the requests whose
fingerprint's top byte is below 4, 1/64 of them. A repeated input is thus
always in the sample or always out of it. Sample requests are keyed, looked
up and stored at all times, so their hit ratio is the stream's, whatever
the mode.

Every ``window`` requests a verdict:
  - looking up every request: stay so while the hits (all of them, or the
    sample's) reach ``min_hit_ratio``; else sample;
  - sampling: look every request up again once the sample's hits reach the
    bound, or once inputs outside the sample are seen to repeat that often.
    Those are caught by a 256-slot table of recent fingerprints (one compare
    per request), so a hot input that happens to lie outside the sample
    brings the cache back too, and at once: a burst of one input outside
    the sample switches back after ``MIN_REPEATS`` repeats, without waiting
    for the window to end.
A ``min_hit_ratio`` of 0 never samples.

While sampling, a request outside the sample runs as with the cache off: no
key, no look-up, no store, and no single flight. Identical requests in
flight together then each run, until the table of recent fingerprints sees
them repeat (MIN_REPEATS) and every request is keyed again.
"""

from __future__ import annotations

import logging

from . import metrics

log = logging.getLogger(__name__)

# Fingerprints whose top byte (of 32 bits) is below this are in the sample: 4/256 = 1/64.
SAMPLE_CUT = 4
SAMPLE_SHIFT = 24
# While sampling, this many repeats outside the sample (and the hit ratio's
# share of the requests skipped so far) switch back to looking every request up at once.
MIN_REPEATS = 8
# A verdict needs this many sample look-ups: until then the window runs on
# (unless, while sampling, inputs outside the sample already repeat enough).
MIN_SAMPLE_LOOKUPS = 16


class Governor:
    __slots__ = ("model", "window", "min_hit_ratio", "sampling", "requests", "hits", "sample_lookups",
                 "sample_hits", "skipped", "repeats", "_recent", "_gauge", "_sampling_models")

    def __init__(self, model: str, window: int, min_hit_ratio: float, sampling_models: set[str] | None = None) -> None:
        """``sampling_models``, if given, holds this model's name while it samples
        (shared by a service's governors: one set look-up for a transport)."""
        self.model = model
        self._sampling_models = sampling_models if sampling_models is not None else set()
        self.window = window
        self.min_hit_ratio = min_hit_ratio
        self.sampling = False
        self._recent: list[int] = [-1] * 256
        self._gauge = metrics.SAMPLING.labels(model)
        self._gauge.set(0)
        self._reset()

    def _reset(self) -> None:
        self.requests = self.hits = self.sample_lookups = self.sample_hits = self.skipped = self.repeats = 0

    def looks_up(self, fingerprint: int) -> bool:
        """Whether the request with this input fingerprint is keyed, looked up
        and stored (report its hit with ``hit``)."""
        if self.requests >= self.window:
            self._decide()
        self.requests += 1
        if fingerprint >> SAMPLE_SHIFT < SAMPLE_CUT:
            self.sample_lookups += 1
            return True
        if not self.sampling:
            return True
        self.skipped += 1
        slot = fingerprint & 255
        if self._recent[slot] == fingerprint:
            self.repeats += 1
            if self.repeats >= MIN_REPEATS and self.repeats >= self.min_hit_ratio * self.skipped:
                self._resume()
                return True
        else:
            self._recent[slot] = fingerprint
        return False

    def hit(self, fingerprint: int) -> None:
        """The look-up of the request with this fingerprint found an answer."""
        self.hits += 1
        if fingerprint >> SAMPLE_SHIFT < SAMPLE_CUT:
            self.sample_hits += 1

    def memo_hit(self) -> None:
        """A request answered from the memo of encoded answers, unkeyed
        (the memo is consulted only while every request is looked up)."""
        if self.requests >= self.window:
            self._decide()
        self.requests += 1
        self.hits += 1

    def _decide(self) -> None:
        bound = self.min_hit_ratio
        if self.sample_lookups < MIN_SAMPLE_LOOKUPS and not (self.sampling and self.repeats >= bound * self.skipped > 0):
            return  # too few sample look-ups to judge on: the window runs on
        sample = self.sample_hits / self.sample_lookups if self.sample_lookups else 0.0
        if not self.sampling:
            # Both must be low: right after sampling, inputs outside the
            # sample miss once more (they were not stored), the sample does not.
            if self.hits < bound * self.requests and sample < bound:
                self.sampling = True
                self._sampling_models.add(self.model)
                log.info("cache: %s: %d hits in %d requests; looking up a 1/64 sample until inputs repeat",
                         self.model, self.hits, self.requests)
        elif sample >= bound or self.repeats >= bound * max(1, self.skipped):
            self._resume()
            return
        if self.skipped:
            metrics.SAMPLED_OUT.labels(self.model).inc(self.skipped)
        self._gauge.set(1 if self.sampling else 0)
        self._reset()

    def _resume(self) -> None:
        """Inputs repeat: look every request up again, from this one on."""
        if self.skipped:
            metrics.SAMPLED_OUT.labels(self.model).inc(self.skipped)
        log.info("cache: %s: inputs repeat (sample: %d hits in %d look-ups; %d repeats in %d other requests); "
                 "looking up every request again", self.model, self.sample_hits, self.sample_lookups,
                 self.repeats, self.skipped)
        self.sampling = False
        self._sampling_models.discard(self.model)
        self._recent = [-1] * 256
        self._gauge.set(0)
        self._reset()

    def close(self) -> None:
        """The model is gone: its series leave /metrics."""
        self._sampling_models.discard(self.model)
        for family in (metrics.SAMPLING, metrics.SAMPLED_OUT):
            try:
                family.remove(self.model)
            except KeyError:  # never exported (no verdict yet)
                pass
