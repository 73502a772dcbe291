"""CacheFront's decision table (cache/front.py): one test per row, each of
which fails when its rule is broken. In process, on the real digits model,
a real repository and a real ResponseCache; where a rule says Skip, the
answer is in the cache first, so ignoring the rule would give a Hit or a Miss."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from cache_helpers import FakeClock, metric, on_digits

from edge_agent.cache import SKIP, CacheFront, Hit, Miss, ResponseCache, Skip, request_key
from edge_agent.cache.governor import SAMPLE_CUT, SAMPLE_SHIFT
from edge_agent.cache.keys import input_fingerprint
from edge_agent.serving.service import InferenceService
from edge_agent.types import InferRequest

RNG = np.random.default_rng(5)
X = RNG.uniform(0, 16, (4, 64)).astype(np.float32)
ANSWER = {"probabilities": np.full((1, 10), 0.1, np.float32), "label": np.array([3], np.int64)}


def req(x=X[:1], **kw) -> InferRequest:
    return InferRequest(model="digits", inputs={"input": x}, **kw)


def too_deep(levels: int = 300) -> dict:
    """Parameters nested deeper than the key's canonical JSON can go (orjson
    stops at 254 levels); decoding them is fine (1024)."""
    d = inner = {}
    for _ in range(levels):
        inner["a"] = {}
        inner = inner["a"]
    return {"x": d}


def run(tmp_path, scenario, cache_on: bool = True, clock=None, **model_yaml):
    """``scenario(front, mv, cache)`` with the digits model routed (``mv``)."""

    def with_front(cfg, repo):
        cache = ResponseCache(tmp_path / "cache", 1 << 20, 0, 3600.0, clock=clock or FakeClock()) if cache_on else None

        async def go():
            try:
                result = scenario(CacheFront(cache, cfg.cache), repo.route("digits", None), cache)
                return await result if asyncio.iscoroutine(result) else result
            finally:
                if cache is not None:
                    cache.close()

        return go()

    def configure(cfg):
        cfg.cache.sample_window = 256

    return on_digits(tmp_path, with_front, configure, **model_yaml)


def stored(cache, mv, r: InferRequest) -> bytes:
    """Put the answer to ``r`` in the cache; its key."""
    key = request_key("digits", mv.model.digest, r)
    cache.put(key, ANSWER)
    return key


def test_without_a_cache_every_request_skips(tmp_path):
    assert run(tmp_path, lambda front, mv, cache: front.lookup(mv, req()), cache_on=False) is SKIP


def test_a_model_whose_model_yaml_turns_the_cache_off_skips(tmp_path):
    def scenario(front, mv, cache):
        stored(cache, mv, req())
        return front.lookup(mv, req()), front.governors.get("digits")

    found, gov = run(tmp_path, scenario, cache__enabled=False)
    assert found is SKIP and gov is None  # not even a governor for it


def test_a_request_that_says_cache_false_skips(tmp_path):
    def scenario(front, mv, cache):
        stored(cache, mv, req())
        return front.lookup(mv, req(use_cache=False)), front.lookup(mv, req())

    skipped, hit = run(tmp_path, scenario)
    assert skipped is SKIP and hit.__class__ is Hit


def in_sample(r: InferRequest) -> bool:
    return input_fingerprint(r) >> SAMPLE_SHIFT < SAMPLE_CUT


def test_a_request_the_governor_leaves_out_skips(tmp_path):
    """Unique inputs until the governor samples; then a dormant request, and
    after dormancy one outside the sample, skip; one inside it is looked up."""

    def scenario(front, mv, cache):
        n = 0
        while "digits" not in front.governors.sampling:
            n += 1
            assert n < 20_000, "unique inputs never made the governor sample"
            last = front.lookup(mv, req(RNG.uniform(0, 16, (1, 64)).astype(np.float32)))
            assert last.__class__ is (Miss if "digits" not in front.governors.sampling else Skip)
        gov = front.governors.get("digits")
        assert gov.dormant_left > 0
        out = [r for r in (req(RNG.uniform(0, 16, (1, 64)).astype(np.float32)) for _ in range(400)) if not in_sample(r)]
        inside = next(r for r in (req(RNG.uniform(0, 16, (1, 64)).astype(np.float32)) for _ in range(10_000)) if in_sample(r))
        stored(cache, mv, out[0])
        dormant = front.lookup(mv, out[0])
        while gov.dormant_left:
            assert front.lookup(mv, out[1]) is SKIP
        left_out = front.lookup(mv, out[0])
        return dormant, left_out, front.lookup(mv, inside)

    dormant, left_out, inside = run(tmp_path, scenario)
    assert dormant is SKIP and left_out is SKIP
    assert inside.__class__ is Miss


@pytest.mark.parametrize("bad", ["parameters", "dtype"])
def test_a_request_whose_key_cannot_be_built_skips_and_is_counted(tmp_path, bad):
    r = req(parameters=too_deep()) if bad == "parameters" else req(X[:1].astype(np.complex64))
    before = metric("edge_agent_cache_errors_total", tier="cache", kind="key")
    assert run(tmp_path, lambda front, mv, cache: front.lookup(mv, r)) is SKIP
    assert metric("edge_agent_cache_errors_total", tier="cache", kind="key") - before == 1


def test_an_answer_in_the_cache_is_a_hit_under_the_requests_key(tmp_path):
    def scenario(front, mv, cache):
        key = stored(cache, mv, req())
        return key, front.lookup(mv, req()), front.governors.get("digits").hits

    key, found, hits = run(tmp_path, scenario)
    assert found.__class__ is Hit and found.key == key and hits == 1
    np.testing.assert_array_equal(found.outputs["probabilities"], ANSWER["probabilities"])


def test_a_miss_gives_the_key_and_a_store_that_keeps_the_answer_for_the_models_ttl(tmp_path):
    clock = FakeClock()

    def scenario(front, mv, cache):
        miss = front.lookup(mv, req())
        assert miss.__class__ is Miss and miss.key == request_key("digits", mv.model.digest, req())
        miss.store(ANSWER)
        hit = front.lookup(mv, req())
        clock.advance(11)  # model.yaml: ttl_s 10
        return hit, front.lookup(mv, req())

    hit, expired = run(tmp_path, scenario, clock=clock, cache__ttl_s=10.0)
    assert hit.__class__ is Hit and expired.__class__ is Miss


def test_identical_misses_in_flight_together_share_one_run(tmp_path):
    async def scenario(front, mv, cache):
        runs = []

        async def work():
            runs.append(1)
            await asyncio.sleep(0.01)
            return ANSWER

        misses = [front.lookup(mv, req()) for _ in range(5)]
        results = await asyncio.gather(*(front.share(m, work) for m in misses))
        return runs, results

    runs, results = run(tmp_path, scenario)
    assert runs == [1] and all(r is ANSWER for r in results)


def test_a_request_whose_key_cannot_be_built_is_answered_uncached(tmp_path):
    """Through the service: the request runs (it used to fail with a bug, a
    500, when the key's JSON of its parameters could not be made)."""
    async def scenario(cfg, repo):
        cache = ResponseCache(tmp_path / "cache", 1 << 20, 0, 3600.0)
        service = InferenceService(cfg, repo, cache=cache)
        try:
            return [await service.infer(req(parameters=too_deep())) for _ in range(2)], service.inflight
        finally:
            service.close()
            cache.close()

    answers, inflight = on_digits(tmp_path, scenario)
    assert [a.cached for a in answers] == [False, False] and inflight == 0
    assert answers[0].outputs["probabilities"].shape == (1, 10)
