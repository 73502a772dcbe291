"""Per model: while its answers are not being reused, the cache looks up only a sample.

A cache costs every miss its key, its look-up, its single-flight entry and
its store (~10 us of event-loop Python per request; on a small model that is
a fifth of the request). Many edge streams never repeat an input (camera
frames, sensor readings), and then that cost buys nothing.

The sample is chosen by a cheap 32-bit hash of the input values
(keys.input_fingerprint): the requests whose fingerprint's top byte is
below 4, 1/64 of them. A repeated input is thus always in the sample or
always out of it. Sample requests are keyed, looked up and stored whenever
fingerprints are taken, so their hit ratio is the stream's, whatever the
mode.

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

Dormancy. Even a fingerprint and a verdict cost a loaded event loop a few
per cent on a small model. So while sampling, fingerprints are taken in one
window only, and after each verdict that stays sampling the next requests
skip the cache without one (``dormant_left``, spent by the service): up to
``DORMANT_WINDOWS`` windows' worth, and never more than ``DORMANT_MAX_S``
seconds of traffic at the rate the last window ran. Inputs that start to
repeat are thus noticed within about a second.

While sampling, a request outside the sample runs as with the cache off: no
key, no look-up, no store, and no single flight. Identical requests in
flight together then each run, until the table of recent fingerprints sees
them repeat (MIN_REPEATS) and every request is keyed again.
"""

from __future__ import annotations

import logging
import time

from . import metrics

log = logging.getLogger(__name__)

# Fingerprints whose top byte (of 32 bits) is below this are in the sample: 4/256 = 1/64.
SAMPLE_CUT = 4
SAMPLE_SHIFT = 24
# While sampling, this many repeats outside the sample (and the hit ratio's
# share of the requests skipped so far) switch back to looking every request up at once.
MIN_REPEATS = 8
# While sampling: requests that skip the cache between two windows of
# fingerprints, at most this many windows' worth and this many seconds' worth.
DORMANT_WINDOWS = 7
DORMANT_MAX_S = 1.0
# A verdict needs this many sample look-ups: until then the window runs on
# (unless, while sampling, inputs outside the sample already repeat enough).
MIN_SAMPLE_LOOKUPS = 16


class Governor:
    __slots__ = ("model", "window", "min_hit_ratio", "sampling", "requests", "hits", "sample_lookups",
                 "sample_hits", "skipped", "repeats", "_recent", "_gauge", "_sampling_models", "dormant_left",
                 "_dormant_granted", "_window_started", "_clock")

    def __init__(self, model: str, window: int, min_hit_ratio: float, sampling_models: set[str] | None = None,
                 clock=time.monotonic) -> None:
        """``sampling_models``, if given, holds this model's name while it samples
        (shared by a service's governors: one set look-up for a transport)."""
        self.model = model
        self._clock = clock
        # Requests left to skip without a fingerprint; the caller spends them:
        #   if gov.dormant_left: gov.dormant_left -= 1  (no look-up)
        #   else: gov.looks_up(fingerprint)
        self.dormant_left = 0
        self._dormant_granted = 0
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
        self._window_started = None

    def looks_up(self, fingerprint: int) -> bool:
        """Whether the request with this input fingerprint is keyed, looked up
        and stored (report its hit with ``hit``)."""
        if self.requests >= self.window:
            self._decide()
            if self.dormant_left:
                self.dormant_left -= 1
                return False
        if not self.requests:
            self._window_started = self._clock()
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
        if not self.requests:
            self._window_started = self._clock()
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
        self._count_sampled_out()
        self._gauge.set(1 if self.sampling else 0)
        if self.sampling:
            # Dormant until the next window: as many requests as ran in
            # DORMANT_MAX_S at this window's rate, DORMANT_WINDOWS windows at most.
            elapsed = self._clock() - self._window_started if self._window_started is not None else 0.0
            per_s = self.requests / elapsed if elapsed > 0 else float("inf")
            self.dormant_left = self._dormant_granted = int(min(DORMANT_WINDOWS * self.window, per_s * DORMANT_MAX_S))
        self._reset()

    def _count_sampled_out(self) -> None:
        """Requests that skipped the cache since the last count: outside the
        sample, and dormant (the grant before this window, all spent by now)."""
        n = self.skipped + self._dormant_granted - self.dormant_left
        self._dormant_granted = self.dormant_left = 0
        if n:
            metrics.SAMPLED_OUT.labels(self.model).inc(n)

    def _resume(self) -> None:
        """Inputs repeat: look every request up again, from this one on."""
        self._count_sampled_out()
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


class Governors:
    """One governor per model, made at the model's first look-up and closed
    when the model goes. ``sampling`` holds the names of the models whose
    governor samples (one set look-up for a transport deciding whether to
    digest a request's bytes for the memo)."""

    __slots__ = ("window", "min_hit_ratio", "sampling", "by_model")

    def __init__(self, window: int, min_hit_ratio: float) -> None:
        self.window = window
        self.min_hit_ratio = min_hit_ratio
        self.sampling: set[str] = set()
        # Read it (a plain dict.get on the request path), never write it: ``of`` does.
        self.by_model: dict[str, Governor] = {}

    def get(self, model: str) -> Governor | None:
        """The model's governor, or None before its first look-up."""
        return self.by_model.get(model)

    def of(self, model: str) -> Governor:
        """The model's governor, made now if it has none."""
        gov = self.by_model.get(model)
        if gov is None:
            gov = self.by_model[model] = Governor(model, self.window, self.min_hit_ratio, self.sampling)
        return gov

    def forget(self, model: str) -> None:
        gov = self.by_model.pop(model, None)
        if gov is not None:
            gov.close()
