"""The memo of encoded answers: the same request bytes get the same answer bytes.

A transport may keep the bytes it sent for an answer that came from the
cache (``keep``), under a digest of the exact request bytes, its framing
and the version that answered (``memo_key``). The next byte-identical
request is then answered by ``lookup`` before it is decoded, validated,
keyed, looked up or encoded: on digits ~3x the throughput of a hit through
the full path (docs/BENCHMARKS.md).

Rules:
  - not consulted for a model whose governor samples (its inputs do not
    repeat, so digesting their bytes buys nothing), nor before the model's
    first look-up through the full path (nothing can be kept yet);
  - not for a model whose model.yaml turns the cache off;
  - a miss pins the version routed to: the transport decodes the request
    for that version, so what it keeps is that version's answer, whatever
    a canary split picks next;
  - an entry lives no longer than the cache entry it encodes (its TTL),
    and a ``delete``/``clear`` of the response cache drops every entry
    (the cache's ``generation`` moves; a delete cannot tell which entries
    encode the key it dropped);
  - memory only, bounded by ``cache.memo_max_bytes``; never written to disk;
  - requests over ``MEMO_MAX_REQUEST`` bytes (camera images) are not memoised: their
    digest would cost the event loop more than the memo saves.

A hit counts as a request answered (``answered``) and as a hit for the
model's governor, as the same request through the full path would.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable, Optional, Tuple

from . import metrics
from .governor import Governors
from .keys import _field as field  # the key framing: tag + length + bytes
from .tiers import VALUE, MemoryTier
from ..errors import EdgeError

_now = time.monotonic
MEMO_SCHEME = b"edge-agent/memo-key/v1"


def memo_key(transport: bytes, model: str, version: str, version_digest: str, request: bytes) -> bytes:
    """32-byte key of an encoded answer: the transport's framing of the
    request (``transport``, e.g. its binary-header length), the model version
    that answers, and the request's exact bytes."""
    h = hashlib.blake2b(digest_size=32)
    field(h, b"K", MEMO_SCHEME)
    field(h, b"t", transport)
    field(h, b"M", model.encode("utf-8"))
    field(h, b"v", version.encode("utf-8"))
    field(h, b"V", version_digest.encode("utf-8"))
    field(h, b"R", request)
    return h.digest()


# Requests larger than this are not memoised: digesting the body costs the event loop
# about 1 ms per MB (an 8 MB camera image: ~9 ms, every transport waiting), and a repeat
# of such a body still hits the response cache, keyed once on its digest.
MEMO_MAX_REQUEST = 256 * 1024


class MemoTier(MemoryTier):
    """Encoded answers by memo key."""

    name = "memo"


class Memo:
    """``cache``: the ResponseCache whose memory entries the kept answers
    encode. ``route(name, version)``: the model version a request goes to
    (raises an EdgeError). ``answered(model_version, seconds)``: a request
    was answered here."""

    def __init__(self, cache, governors: Governors, route: Callable, answered: Callable, max_bytes: int,
                 clock=time.time) -> None:
        self._cache = cache
        self._governors = governors
        self._route = route
        self._answered = answered
        self.store = MemoTier(max_bytes, clock=clock)
        self._generation = cache.generation
        self.hits = 0
        self._hit_counter = metrics.HITS.labels("memo")

    def lookup(self, transport: bytes, name: str, version: Optional[str], request: bytes) -> Tuple[object, object]:
        """(answer, pin): ``answer`` is None on a miss; ``pin`` is None when
        the memo does not apply (or on a hit), else (memo key, the version
        routed to) for the transport to decode the request for and to hand
        back to ``keep``."""
        gov = self._governors.get(name)
        if gov is None or gov.sampling or len(request) > MEMO_MAX_REQUEST:
            return None, None
        t0 = _now()
        try:
            mv = self._route(name, version)
        except EdgeError:
            return None, None  # the full path says why, in its own words
        model = mv.model
        if not model.spec.cache.enabled:
            return None, None
        key = memo_key(transport, name, mv.version, model.digest, request)
        answer = self.get(key)
        if answer is None:
            return None, (key, mv.version)
        gov.memo_hit()
        self._answered(mv, _now() - t0)
        return answer, None

    def keep(self, key: bytes, resp, answer, size: int) -> None:
        """Keep ``answer`` (``size`` bytes), the encoding of ``resp``, under
        the ``key`` that ``lookup`` pinned, if ``resp`` came from the cache:
        for as long as the cache entry it encodes lives."""
        if resp.cache_key is not None:
            self.put(key, resp.cache_key, answer, size)

    def get(self, key: bytes):
        """The answer kept under ``key``, or None."""
        if self._cache.generation != self._generation:
            self._follow_cache()
        entry = self.store.get_entry(key)
        if entry is None:
            return None
        self.hits += 1
        self._hit_counter.inc()
        return entry[VALUE]

    def put(self, key: bytes, cache_key: bytes, answer, size: int) -> None:
        """Keep ``answer`` under ``key`` while the cache's memory entry
        ``cache_key`` lives; nothing if it does not."""
        if self._cache.generation != self._generation:
            self._follow_cache()
        expires_at = self._cache.expires_at(cache_key)
        if expires_at is not None:
            self.store.put(key, answer, expires_at, size)

    def _follow_cache(self) -> None:
        """The cache deleted or cleared entries since we last looked: every
        kept answer may encode one of them."""
        self.store.clear()
        self._generation = self._cache.generation

    def stats(self) -> dict:
        return {"hits": self.hits, **self.store.stats()}
