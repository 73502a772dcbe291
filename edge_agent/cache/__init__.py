"""Response cache: version-aware keys, memory LRU + SQLite tiers, single flight.

What lives here:
  front.py           CacheFront: the one decision the request path asks
                     (Hit / Miss / Skip), owning the governors and single flight
  memo.py            Memo: encoded answers by request bytes (lookup / keep)
  governor.py        per model: look up only a sample while answers are not reused
  keys.py            the cache key (BLAKE2b over model, version digest, inputs,
                     parameters) and the governor's input fingerprint
  singleflight.py    identical requests in flight together run once
  response_cache.py  ResponseCache: memory LRU in front of SQLite, what goes to disk
  tiers.py           the CacheTier contract and the memory tier
  sqlite_tier.py     the disk tier: request path, writer thread, fault state
  sqlite_store.py    the SQLite file as the writer sees it: open, check, write, bound
  disk_state.py      the disk tier's fault states and their transition table
  disk_ops.py        the operations the disk writer's queue carries
  keyfilter.py       Bloom filter of the disk's keys; the doorkeeper of disk admission
  values.py          encoding answers to bytes (and checking them on the way back)
  metrics.py         the cache's Prometheus metrics
"""

from .front import SKIP, CacheFront, Hit, Miss, Skip
from .keys import IGNORED_PARAMETERS, request_key
from .memo import Memo
from .response_cache import ResponseCache
from .singleflight import SingleFlight
from .sqlite_tier import SQLiteTier
from .tiers import CacheTier, Found, MemoryTier
from .values import CorruptCacheValue, decode_outputs, encode_outputs

__all__ = [
    "IGNORED_PARAMETERS",
    "SKIP",
    "CacheFront",
    "CacheTier",
    "CorruptCacheValue",
    "Found",
    "Hit",
    "Memo",
    "MemoryTier",
    "Miss",
    "ResponseCache",
    "SQLiteTier",
    "SingleFlight",
    "Skip",
    "decode_outputs",
    "encode_outputs",
    "request_key",
]
