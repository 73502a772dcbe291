"""Response cache: version-aware keys, memory LRU + SQLite tiers, single flight."""

from .keys import IGNORED_PARAMETERS, request_key
from .response_cache import ResponseCache
from .singleflight import SingleFlight
from .sqlite_tier import SQLiteTier
from .tiers import CacheTier, Found, MemoryTier
from .values import CorruptCacheValue, decode_outputs, encode_outputs

__all__ = [
    "IGNORED_PARAMETERS",
    "CacheTier",
    "CorruptCacheValue",
    "Found",
    "MemoryTier",
    "ResponseCache",
    "SQLiteTier",
    "SingleFlight",
    "decode_outputs",
    "encode_outputs",
    "request_key",
]
