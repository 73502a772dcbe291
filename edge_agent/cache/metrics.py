"""Prometheus metrics of the response cache (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HITS = Counter("edge_agent_cache_hits_total", "Cache lookups answered, by the tier that held the entry.", ["tier"])
# A miss is counted once per lookup that no tier could answer; a memory miss
# that the disk answers is a disk hit, so per-tier misses follow from hits.
MISSES = Counter("edge_agent_cache_misses_total", "Cache lookups that no tier could answer.")
BYTES = Gauge("edge_agent_cache_bytes", "Bytes held by a cache tier (keys and values).", ["tier"])
ENTRIES = Gauge("edge_agent_cache_entries", "Entries held by a cache tier.", ["tier"])
EVICTIONS = Counter(
    "edge_agent_cache_evictions_total",
    "Entries removed by a tier: size (over the byte bound), ttl (expired), corrupt (undecodable value).",
    ["tier", "reason"],
)
ERRORS = Counter(
    "edge_agent_cache_errors_total",
    "Cache faults by tier (memory, disk; codec and cache for encode and internal faults) and kind (corrupt, disk_full, readonly, locked, io, queue_full, decode, internal; key: a request whose cache key could not be built, run uncached).",
    ["tier", "kind"],
)
AVAILABLE = Gauge("edge_agent_cache_tier_available", "1 while a tier serves, 0 while it has stepped aside after a fault.", ["tier"])
SPILLS_DECLINED = Counter(
    "edge_agent_cache_spills_declined_total",
    "Answers the memory bound pushed out unused whose key had not been pushed out before: not written to disk.",
)
SAMPLING = Gauge(
    "edge_agent_cache_sampling",
    "1 while a model's answers are not being reused and the cache looks up only a 1/64 sample of its requests.",
    ["model"],
)
SAMPLED_OUT = Counter(
    "edge_agent_cache_sampled_out_total",
    "Requests not looked up or stored while their model's cache was sampling (counted at each window's end).",
    ["model"],
)
SINGLEFLIGHT_SHARED = Counter(
    "edge_agent_cache_singleflight_shared_total", "Requests that waited on an identical in-flight request instead of running."
)
