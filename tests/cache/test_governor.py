"""The per-model governor: a cache that earns nothing looks up only a sample, and comes back."""

from __future__ import annotations

import logging
import zlib

import numpy as np
from cache_helpers import metric
from edge_agent.cache.governor import DORMANT_WINDOWS, MIN_REPEATS, SAMPLE_CUT, SAMPLE_SHIFT, Governor
from edge_agent.cache.keys import input_fingerprint
from edge_agent.types import InferRequest


class Ticker:
    """A clock that moves ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def governor(name: str, **kw) -> Governor:
    """A governor that grants no dormancy: at its clock's pace a window takes hours."""
    return Governor(name, clock=Ticker(1e4), **kw)


def key(i: int) -> int:
    """A fingerprint for input number ``i`` (a CRC-32 stands in for keys.input_fingerprint's hash)."""
    return zlib.crc32(i.to_bytes(8, "little", signed=True))


def in_sample(fp: int) -> bool:
    return fp >> SAMPLE_SHIFT < SAMPLE_CUT


def unsampled(start: int) -> int:
    """The first fingerprint from ``start`` on that lies outside the sample."""
    while in_sample(key(start)):
        start += 1
    return key(start)


def run(gov: Governor, keys, hit) -> int:
    """Offer fingerprints as the service does (a dormant request is skipped
    unseen); ``hit(k)`` says whether the cache would have answered. Returns look-ups."""
    looked = 0
    for k in keys:
        if gov.dormant_left:
            gov.dormant_left -= 1
        elif gov.looks_up(k):
            looked += 1
            if hit(k):
                gov.hit(k)
    return looked


class Cache:
    """What the cache would answer: a key looked up before hits."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, k: bytes) -> bool:
        found = k in self.seen
        self.seen.add(k)
        return found


def test_unique_inputs_switch_to_a_sample_chosen_by_fingerprint():
    gov = governor("g1", window=256, min_hit_ratio=0.05)
    i = 0
    while not gov.sampling:
        looked = gov.looks_up(key(i))
        assert looked or gov.sampling  # every request is looked up until the verdict
        i += 1
    # A window is 256 requests, stretched until it holds 16 sample look-ups.
    assert 256 < i < 3000 and sum(in_sample(key(j)) for j in range(i - 1)) >= 16
    assert metric("edge_agent_cache_sampling", model="g1") == 1
    keys = [key(j) for j in range(3000, 13000)]
    looked = [k for k in keys if gov.looks_up(k)]
    # Exactly the fingerprints in the sample, and a repeated one always gets the same answer.
    assert looked == [k for k in keys if in_sample(k)]
    assert 1 / 100 < len(looked) / len(keys) < 1 / 40
    assert all(gov.looks_up(k) for k in looked[:10]) and not any(gov.looks_up(k) for k in keys[:100] if not in_sample(k))


def test_reuse_in_the_sample_brings_every_request_back():
    gov = governor("g2", window=256, min_hit_ratio=0.2)
    run(gov, (key(i) for i in range(3000)), lambda k: False)
    assert gov.sampling
    before = metric("edge_agent_cache_sampled_out_total", model="g2")
    cache = Cache()
    # 4000 distinct inputs, each twice, far apart: too far for the table of
    # recent fingerprints, so only the sample can tell that they repeat.
    inputs = [key(i) for i in range(5000, 9000)]
    run(gov, inputs, cache)
    run(gov, inputs, cache)
    assert not gov.sampling and metric("edge_agent_cache_sampling", model="g2") == 0
    assert metric("edge_agent_cache_sampled_out_total", model="g2") > before
    # Every request is looked up again. Inputs outside the sample were not
    # stored while sampling, so they miss once more now: the verdict must
    # not take that for a stream that does not repeat (the sample says it does).
    assert run(gov, inputs, cache) == len(inputs)
    assert not gov.sampling


def test_a_hot_input_outside_the_sample_brings_every_request_back():
    gov = governor("g3", window=256, min_hit_ratio=0.05)
    run(gov, (key(i) for i in range(3000)), lambda k: False)
    assert gov.sampling
    hot = unsampled(10_000)
    assert not gov.looks_up(hot)
    # One request in five is the same idle frame, the rest are new.
    stream = [hot if i % 5 == 0 else key(20_000 + i) for i in range(600)]
    run(gov, stream, Cache())
    assert not gov.sampling and gov.looks_up(hot)


def test_a_burst_of_one_input_outside_the_sample_switches_back_at_once(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.cache.governor")
    gov = governor("g9", window=100_000, min_hit_ratio=0.01)
    gov.sampling = True  # as after a verdict; the window is far from its end
    run(gov, (key(i) for i in range(200)), lambda k: False)
    burst = unsampled(50_000)
    # The first sighting and MIN_REPEATS - 1 repeats are not looked up; the next one is.
    looked = [gov.looks_up(burst) for _ in range(MIN_REPEATS + 2)]
    assert looked == [False] * MIN_REPEATS + [True, True]
    assert not gov.sampling and metric("edge_agent_cache_sampling", model="g9") == 0
    assert "g9: inputs repeat" in caplog.text and f"{MIN_REPEATS} repeats" in caplog.text


def test_the_fingerprint_follows_the_values_not_their_layout():
    x = np.random.default_rng(3).random((4, 16), dtype=np.float32)

    def fp(**inputs) -> int:
        return input_fingerprint(InferRequest(model="m", version=None, inputs=inputs, outputs=None))

    same = {fp(a=x), fp(a=np.asfortranarray(x)), fp(a=x.astype(">f4")), fp(a=x.copy())}
    assert len(same) == 1
    y = x.copy()
    y[3, 15] += 1
    assert fp(a=y) != fp(a=x)
    # Several inputs: by name, whatever the order they arrived in.
    assert fp(a=x, b=y) == fp(b=y, a=x) != fp(a=y, b=x)
    texts = np.array([b"one", "two"], dtype=object)
    assert fp(t=texts) == fp(t=np.array(["one", b"two"], dtype=object)) != fp(t=np.array([b"one", b"three"], dtype=object))


def test_hits_on_inputs_outside_the_sample_keep_every_request_looked_up():
    gov = governor("g4", window=256, min_hit_ratio=0.05)
    hot = unsampled(30_000)
    cache = Cache()
    # Half the requests are one hot input outside the sample; the sample's own keys never repeat.
    stream = [hot if i % 2 else key(40_000 + i) for i in range(3000)]
    assert run(gov, stream, cache) == 3000
    assert not gov.sampling


def test_a_ratio_of_zero_never_samples():
    gov = governor("g5", window=256, min_hit_ratio=0.0)
    assert run(gov, (key(i) for i in range(2000)), lambda k: False) == 2000
    assert not gov.sampling


def test_enough_hits_keep_every_request_looked_up():
    gov = governor("g6", window=4096, min_hit_ratio=0.01)
    # A tenth of the keys hit: far above 1 %, in every window.
    assert run(gov, (key(i) for i in range(20_000)), lambda k: k & 255 < 26) == 20_000
    assert not gov.sampling


def test_close_takes_the_models_series_off_metrics():
    gov = governor("g7", window=256, min_hit_ratio=0.05)
    run(gov, (key(i) for i in range(5000)), lambda k: False)
    assert metric("edge_agent_cache_sampling", model="g7") == 1
    assert metric("edge_agent_cache_sampled_out_total", model="g7") > 0
    gov.close()
    from prometheus_client import REGISTRY, generate_latest

    assert b'model="g7"' not in generate_latest(REGISTRY)
    governor("g8", window=256, min_hit_ratio=0.05).close()  # nothing sampled out yet: no error


def test_the_shared_set_names_the_models_that_sample():
    sampling: set[str] = set()
    gov = governor("g10", window=256, min_hit_ratio=0.01, sampling_models=sampling)
    run(gov, (key(i) for i in range(3000)), lambda k: False)
    assert gov.sampling and sampling == {"g10"}
    hot = unsampled(60_000)
    assert any(gov.looks_up(hot) for _ in range(50))
    assert not gov.sampling and sampling == set()
    run(gov, (key(i) for i in range(70_000, 73_000)), lambda k: False)
    assert sampling == {"g10"}
    gov.close()
    assert sampling == set()


def until_sampling(gov: Governor) -> None:
    """Offer unique fingerprints until the verdict that starts sampling."""
    i = 0
    while not gov.sampling:
        gov.looks_up(key(i))
        i += 1


class Watched(Governor):
    """A governor that notes the fingerprints it is shown."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.shown: list[int] = []

    def looks_up(self, fingerprint: int) -> bool:
        self.shown.append(fingerprint)
        return super().looks_up(fingerprint)


def test_between_windows_of_fingerprints_a_sampling_model_is_dormant():
    gov = Watched("g11", window=256, min_hit_ratio=0.01, clock=Ticker(0.001))
    until_sampling(gov)
    # A window "took" 1 ms, so a second holds far more than DORMANT_WINDOWS windows: the cap.
    # The request that got the verdict is the first dormant one.
    assert gov.dormant_left == DORMANT_WINDOWS * 256 - 1
    gov.shown.clear()
    before = metric("edge_agent_cache_sampled_out_total", model="g11")
    run(gov, (key(i) for i in range(10_000, 10_000 + DORMANT_WINDOWS * 256 - 1)), lambda k: False)
    assert gov.shown == [] and gov.dormant_left == 0
    run(gov, (key(i) for i in range(20_000, 21_000)), lambda k: False)
    assert len(gov.shown) >= 256  # the next window (256 requests at least) takes fingerprints again
    # Dormant requests count as sampled out, at the next verdict.
    run(gov, (key(i) for i in range(30_000, 40_000)), lambda k: False)
    assert metric("edge_agent_cache_sampled_out_total", model="g11") - before >= DORMANT_WINDOWS * 256 - 1


def test_dormancy_lasts_about_a_second_of_traffic():
    fast = Governor("g12", window=256, min_hit_ratio=0.01, clock=Ticker(5.0))
    until_sampling(fast)
    # Two clock readings per window, 5 s apart: the window's n requests (256 to a
    # few thousand, until 16 sample look-ups) ran at n / 5 a second; one second's worth.
    assert 256 // 5 <= fast.dormant_left + 1 <= 4000 // 5
    slow = Governor("g13", window=256, min_hit_ratio=0.01, clock=Ticker(1000.0))
    until_sampling(slow)
    # A window that took 1000 s (a request or two a second): a dormant request or two.
    assert slow.dormant_left <= 3
