"""The memo of encoded answers (cache/memo.py): what it keeps, for how long,
and when it applies. Storage against a real ResponseCache; the rules of
``lookup`` on the real digits model through a real repository."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from cache_helpers import FakeClock, on_digits

from edge_agent.cache import CacheFront, ResponseCache, request_key
from edge_agent.cache.governor import Governors
from edge_agent.cache.memo import Memo
from edge_agent.errors import UnknownModel
from edge_agent.types import InferRequest, InferResponse

X = np.random.default_rng(9).uniform(0, 16, (1, 64)).astype(np.float32)
ANSWER = (200, b"ct", b"encoded")


def no_route(name, version):
    raise UnknownModel(name)


def memo_of(cache, clock=None) -> Memo:
    return Memo(cache, Governors(4096, 0.01), no_route, lambda mv, dt: None, 1 << 16, clock=clock or FakeClock())


# --- storage (moved from test_response_cache.py, assertions as they were) ---


def test_memo_keeps_encoded_answers_while_their_entry_lives(tmp_path):
    clock = FakeClock()
    cache = ResponseCache(tmp_path, 1 << 20, 0, 3600.0, clock=clock)
    memo = memo_of(cache, clock)
    outputs = {"y": np.arange(4, dtype=np.float32)}
    cache.put(b"k" * 32, outputs, ttl_s=10.0)
    answer = (200, b"ct", b"encoded")
    memo.put(b"m" * 32, b"k" * 32, answer, 9)
    assert memo.get(b"m" * 32) == answer and memo.stats()["hits"] == 1
    # No memory entry behind it: nothing is kept.
    memo.put(b"n" * 32, b"x" * 32, answer, 9)
    assert memo.get(b"n" * 32) is None
    # The entry's TTL is the memo's.
    clock.advance(10.5)
    assert memo.get(b"m" * 32) is None


def test_delete_and_clear_make_the_memo_stale(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 0, 3600.0)
    memo = memo_of(cache)
    cache.put(b"k" * 32, {"y": np.zeros(2, np.float32)})
    cache.put(b"j" * 32, {"y": np.ones(2, np.float32)})
    memo.put(b"m" * 32, b"k" * 32, "a", 1)
    memo.put(b"n" * 32, b"j" * 32, "b", 1)
    cache.delete(b"k" * 32)
    # A delete cannot tell which memo entries encode that key: all go stale.
    assert memo.get(b"m" * 32) is None and memo.get(b"n" * 32) is None
    memo.put(b"n" * 32, b"j" * 32, "b", 1)
    assert memo.get(b"n" * 32) == "b"
    cache.clear()
    assert memo.get(b"n" * 32) is None
    settings = SimpleNamespace(sample_window=4096, sample_below_hit_ratio=0.01, memo_max_bytes=0)
    assert CacheFront(ResponseCache(tmp_path / "off", 1 << 20, 0, 3600.0), settings, no_route, print).memo is None  # 0 bytes: no memo


# --- the rules of lookup ----------------------------------------------------


def run(tmp_path, scenario, **model_yaml):
    """``scenario(front, repo, answered)`` on a front whose memo routes with the repository."""

    def with_front(cfg, repo):
        cache = ResponseCache(tmp_path / "cache", 1 << 20, 0, 3600.0)
        answered = []
        front = CacheFront(cache, cfg.cache, repo.route, lambda mv, dt: answered.append(mv.version))
        try:
            return scenario(front, repo, answered)
        finally:
            cache.close()

    return on_digits(tmp_path, with_front, **model_yaml)


def through_the_full_path(front, repo) -> InferResponse:
    """What the service does with a request the memo pinned: look it up
    (storing the answer first, so it is a hit), answer from the cache."""
    mv = repo.route("digits", None)
    req = InferRequest(model="digits", inputs={"input": X})
    key = request_key("digits", mv.model.digest, req)
    front.cache.put(key, {"probabilities": np.zeros((1, 10), np.float32)})
    found = front.lookup(mv, req)
    return InferResponse(model="digits", version=mv.version, outputs=found.outputs, cached=True, cache_key=found.key)


def test_a_miss_pins_the_version_and_what_is_kept_answers_the_same_bytes(tmp_path):
    def scenario(front, repo, answered):
        memo = front.memo
        through_the_full_path(front, repo)  # the model's first look-up makes its governor
        miss = memo.lookup(b"", "digits", None, b"request bytes")
        memo.keep(miss[1][0], through_the_full_path(front, repo), ANSWER, 20)
        hit = memo.lookup(b"", "digits", None, b"request bytes")
        other = memo.lookup(b"8", "digits", None, b"request bytes")  # other framing: its own key
        return miss, hit, other, answered, front.governors.get("digits").hits

    miss, hit, other, answered, gov_hits = run(tmp_path, scenario)
    assert miss[0] is None and miss[1][1] == "1" and len(miss[1][0]) == 32
    assert hit == (ANSWER, None) and answered == ["1"] and gov_hits == 3  # 2 look-ups + the memo hit
    assert other[0] is None and other[1][0] != miss[1][0]


def test_an_answer_not_from_the_cache_is_not_kept(tmp_path):
    def scenario(front, repo, answered):
        memo = front.memo
        through_the_full_path(front, repo)
        key = memo.lookup(b"", "digits", None, b"r")[1][0]
        memo.keep(key, InferResponse(model="digits", version="1", outputs={}), ANSWER, 20)
        return memo.lookup(b"", "digits", None, b"r")[0]

    assert run(tmp_path, scenario) is None


def test_the_memo_does_not_apply_before_the_first_look_up_nor_while_the_model_samples(tmp_path):
    def scenario(front, repo, answered):
        memo = front.memo
        before = memo.lookup(b"", "digits", None, b"r")
        through_the_full_path(front, repo)
        front.governors.get("digits").sampling = True  # as a verdict of the governor sets it
        sampling = memo.lookup(b"", "digits", None, b"r")
        return before, sampling

    assert run(tmp_path, scenario) == ((None, None), (None, None))


def test_the_memo_does_not_apply_to_a_model_whose_cache_is_off_or_that_does_not_route(tmp_path):
    def scenario(front, repo, answered):
        front.governors.of("digits")
        front.governors.of("nosuch")
        return front.memo.lookup(b"", "digits", None, b"r"), front.memo.lookup(b"", "nosuch", None, b"r")

    assert run(tmp_path, scenario, cache__enabled=False) == ((None, None), (None, None))


def test_the_memo_does_not_apply_to_a_request_too_large_to_digest_on_the_loop(tmp_path):
    """An 8 MB camera image digested for the memo cost the event loop ~9 ms before the cache
    digested it again (hostile review): a body over MEMO_MAX_REQUEST skips the memo."""
    from edge_agent.cache.memo import MEMO_MAX_REQUEST

    def scenario(front, repo, answered):
        through_the_full_path(front, repo)
        small = front.memo.lookup(b"", "digits", None, b"r" * MEMO_MAX_REQUEST)
        large = front.memo.lookup(b"", "digits", None, b"r" * (MEMO_MAX_REQUEST + 1))
        return small[1] is not None, large

    assert run(tmp_path, scenario) == (True, (None, None))
