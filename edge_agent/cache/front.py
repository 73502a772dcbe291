"""The one decision the request path asks of the cache: Hit, Miss or Skip.

``CacheFront.lookup(model_version, request)`` answers, in this order (the
first rule that applies decides; tests/cache/test_front.py has one test per
row):

  no cache (``cache.enabled: false``)           Skip
  model.yaml ``cache.enabled: false``           Skip
  request ``"parameters": {"cache": false}``    Skip
  the model's governor leaves it out            Skip   (governor.py: sampling, dormant)
  its key cannot be built                       Skip   (counted, never a failed request)
  the cache holds the answer                    Hit(outputs, key)
  otherwise                                     Miss(key, store)

Skip means: run the request as with the cache off (no key, no store, no
single flight). On a Miss the caller runs the request through
``share(miss, work)``, so identical requests in flight together run once,
and hands ``miss.store`` to whatever computes the answer: the batcher calls
it on its worker thread, before the request's future is resolved, so a
follower or a later request finds the answer and the event loop does not
pay for storing it.

The front owns the per-model governors and the single flight; the memo of
encoded answers (memo.py) shares its governors. ``model_version`` is
anything with ``.model`` carrying ``name``, ``digest`` and ``spec.cache``
(serving/repository.ModelVersion): the cache does not import the serving
layer above it.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Awaitable, Callable, Optional

from . import metrics
from .governor import Governors
from .keys import input_fingerprint, request_key
from .memo import Memo
from .singleflight import SingleFlight

log = logging.getLogger(__name__)


class Hit:
    """The cache holds the answer: ``outputs`` (the caller's own dict of
    read-only arrays), found under ``key``."""

    __slots__ = ("outputs", "key")

    def __init__(self, outputs: dict, key: bytes) -> None:
        self.outputs = outputs
        self.key = key


class Miss:
    """Looked up, not found: run the request with ``CacheFront.share`` and
    give ``store`` (one argument: the outputs) to what computes the answer."""

    __slots__ = ("key", "store")

    def __init__(self, key: bytes, store: Callable[[dict], None]) -> None:
        self.key = key
        self.store = store


class Skip:
    """The cache stays out of this request: run it as with the cache off."""

    __slots__ = ()


SKIP = Skip()


class CacheFront:
    """``cache`` is a ResponseCache, or None when the cache is off.
    ``settings`` is the ``cache`` config section (sample_window,
    sample_below_hit_ratio, memo_max_bytes). The memo needs ``route``
    (name, version -> model version, raising an EdgeError) and ``answered``
    (model version, seconds: a request was answered from the memo); without
    them, or without a memory tier, there is no memo (``memo`` is None)."""

    def __init__(self, cache, settings, route: Optional[Callable] = None, answered: Optional[Callable] = None) -> None:
        self.cache = cache
        self.governors = Governors(settings.sample_window, settings.sample_below_hit_ratio)
        self._by_model = self.governors.by_model
        self.flights = SingleFlight()
        self.memo: Optional[Memo] = None
        if (cache is not None and cache.memory is not None and settings.memo_max_bytes > 0
                and route is not None and answered is not None):
            self.memo = Memo(cache, self.governors, route, answered, settings.memo_max_bytes)
        if cache is not None:
            metrics.HITS.labels("memo")  # exported (at 0) whenever the cache is on, memo or not
        self._unkeyable = metrics.ERRORS.labels("cache", "key")
        self._unkeyable_models: set = set()

    def lookup(self, model_version, request):
        """Hit, Miss or SKIP for ``request`` routed to ``model_version`` (module doc)."""
        cache = self.cache
        model = model_version.model
        if cache is None or not request.use_cache or not model.spec.cache.enabled:
            return SKIP
        gov = self._by_model.get(model.name)
        if gov is None:
            gov = self.governors.of(model.name)
        # While this model's answers are not reused, only a sample of
        # requests is keyed, and between two windows of samples no request
        # is even fingerprinted (governor.py: dormancy).
        if gov.dormant_left:
            gov.dormant_left -= 1
            return SKIP
        try:
            fp = input_fingerprint(request)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot key a request stays out of it
            return self._cannot_key(model.name, exc)
        if not gov.looks_up(fp):
            return SKIP
        try:
            # The key holds the model file's digest, so a new version never
            # reads another version's answers.
            key = request_key(model.name, model.digest, request)
        except Exception as exc:  # noqa: BLE001
            return self._cannot_key(model.name, exc)
        outputs = cache.get(key)
        if outputs is not None:
            gov.hit(fp)
            return Hit(outputs, key)
        return Miss(key, partial(cache.put, key, ttl_s=model.spec.cache.ttl_s))

    def share(self, miss: Miss, work: Callable[[], Awaitable]) -> Awaitable:
        """``work()``'s result, started once for all identical requests in
        flight together (singleflight.py); an awaitable."""
        return self.flights.run(miss.key, work)

    def forget(self, model: str) -> None:
        """The model is gone: drop its governor (and its metric series)."""
        self.governors.forget(model)

    def _cannot_key(self, model: str, exc: Exception) -> Skip:
        self._unkeyable.inc()
        if model not in self._unkeyable_models:
            self._unkeyable_models.add(model)
            log.warning("cache: %s: a request whose cache key cannot be built runs uncached (%s: %s); "
                        "logged once per model, counted in edge_agent_cache_errors_total{tier=\"cache\",kind=\"key\"}",
                        model, type(exc).__name__, exc)
        return SKIP
