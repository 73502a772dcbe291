"""The per-model governor: a cache that earns nothing looks up only a sample, and comes back."""

import hashlib

from cache_helpers import metric
from edge_agent.cache.governor import SAMPLE_CUT, Governor


def key(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little", signed=True), digest_size=32).digest()


def unsampled(start: int) -> bytes:
    """The first key from ``start`` on that lies outside the sample."""
    while key(start)[0] < SAMPLE_CUT:
        start += 1
    return key(start)


def run(gov: Governor, keys, hit) -> int:
    """Offer keys; ``hit(k)`` says whether the cache would have answered. Returns look-ups."""
    looked = 0
    for k in keys:
        if gov.looks_up(k):
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


def test_unique_inputs_switch_to_a_sample_chosen_by_key():
    gov = Governor("g1", window=256, min_hit_ratio=0.05)
    i = 0
    while not gov.sampling:
        looked = gov.looks_up(key(i))
        assert looked or gov.sampling  # every request is looked up until the verdict
        i += 1
    # A window is 256 requests, stretched until it holds 16 sample look-ups.
    assert 256 < i < 1000 and sum(key(j)[0] < SAMPLE_CUT for j in range(i - 1)) >= 16
    assert metric("edge_agent_cache_sampling", model="g1") == 1
    keys = [key(j) for j in range(1000, 3000)]
    looked = [k for k in keys if gov.looks_up(k)]
    # Exactly the keys in the sample, and a repeated key always gets the same answer.
    assert looked == [k for k in keys if k[0] < SAMPLE_CUT]
    assert 0.03 < len(looked) / len(keys) < 0.10
    assert all(gov.looks_up(k) for k in looked[:10]) and not any(gov.looks_up(k) for k in keys[:100] if k[0] >= SAMPLE_CUT)


def test_reuse_in_the_sample_brings_every_request_back():
    gov = Governor("g2", window=256, min_hit_ratio=0.2)
    run(gov, (key(i) for i in range(600)), lambda k: False)
    assert gov.sampling
    before = metric("edge_agent_cache_sampled_out_total", model="g2")
    cache = Cache()
    # 2000 distinct inputs, each twice in a row apart: too far apart for the
    # recent-keys table, so only the sample can tell that they repeat.
    inputs = [key(i) for i in range(5000, 7000)]
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
    gov = Governor("g3", window=256, min_hit_ratio=0.05)
    run(gov, (key(i) for i in range(600)), lambda k: False)
    assert gov.sampling
    hot = unsampled(10_000)
    assert not gov.looks_up(hot)
    # One request in five is the same idle frame, the rest are new.
    stream = [hot if i % 5 == 0 else key(20_000 + i) for i in range(600)]
    run(gov, stream, Cache())
    assert not gov.sampling and gov.looks_up(hot)


def test_hits_on_inputs_outside_the_sample_keep_every_request_looked_up():
    gov = Governor("g4", window=256, min_hit_ratio=0.05)
    hot = unsampled(30_000)
    cache = Cache()
    # Half the requests are one hot input outside the sample; the sample's own keys never repeat.
    stream = [hot if i % 2 else key(40_000 + i) for i in range(3000)]
    assert run(gov, stream, cache) == 3000
    assert not gov.sampling


def test_a_ratio_of_zero_never_samples():
    gov = Governor("g5", window=256, min_hit_ratio=0.0)
    assert run(gov, (key(i) for i in range(2000)), lambda k: False) == 2000
    assert not gov.sampling


def test_enough_hits_keep_every_request_looked_up():
    gov = Governor("g6", window=4096, min_hit_ratio=0.01)
    # A tenth of the keys hit: far above 1 %, in every window.
    assert run(gov, (key(i) for i in range(20_000)), lambda k: k[1] < 26) == 20_000
    assert not gov.sampling


def test_close_takes_the_models_series_off_metrics():
    gov = Governor("g7", window=256, min_hit_ratio=0.05)
    run(gov, (key(i) for i in range(2000)), lambda k: False)
    assert metric("edge_agent_cache_sampling", model="g7") == 1
    assert metric("edge_agent_cache_sampled_out_total", model="g7") > 0
    gov.close()
    from prometheus_client import REGISTRY, generate_latest

    assert b'model="g7"' not in generate_latest(REGISTRY)
    Governor("g8", window=256, min_hit_ratio=0.05).close()  # nothing sampled out yet: no error
