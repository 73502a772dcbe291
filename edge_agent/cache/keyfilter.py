"""Bloom filters over cache keys: the keys held by the disk tier (KeyFilter),
and the keys the memory tier has pushed out once (Doorkeeper, at the end).

Most lookups that reach the disk are misses (a new input), and a SQLite point
read is the dearest part of a miss. The filter answers "certainly not on
disk" from memory; a false positive only costs the lookup it would have cost
anyway. Keys are BLAKE2b digests, so their first four 32-bit words already are
independent uniform hashes: no hashing here.

Only the disk writer adds keys (after it writes them) and rebuilds the filter
from the database (at open, and once deletions and additions have made it
stale), so the filter never claims less than the database holds; request
threads only read it.
"""

from __future__ import annotations

import struct

import numpy as np

KEY_LEN = 32
PROBES = 4
# 12 bits per expected key with 4 probes: about 0.6 % false positives when full.
BITS_PER_KEY = 12
MIN_BITS, MAX_BITS = 1 << 16, 1 << 31
_WORDS = struct.Struct("<4I")


class KeyFilter:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1024, capacity)
        bits = MIN_BITS
        while bits < self.capacity * BITS_PER_KEY and bits < MAX_BITS:
            bits <<= 1
        self.bits = bits
        self._mask = bits - 1
        self._array = bytearray(bits // 8)
        # Keys added since the filter was built: past the capacity the false
        # positive rate climbs, and the writer rebuilds.
        self.added = 0

    def __contains__(self, key: bytes) -> bool:
        if len(key) != KEY_LEN:
            return True  # not a digest: the filter cannot speak for it
        a, b, c, d = _WORDS.unpack_from(key)
        m, arr = self._mask, self._array
        a &= m
        if not arr[a >> 3] >> (a & 7) & 1:
            return False
        b &= m
        if not arr[b >> 3] >> (b & 7) & 1:
            return False
        c &= m
        if not arr[c >> 3] >> (c & 7) & 1:
            return False
        d &= m
        return bool(arr[d >> 3] >> (d & 7) & 1)

    def add(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            return
        m, arr = self._mask, self._array
        for w in _WORDS.unpack_from(key):
            w &= m
            arr[w >> 3] |= 1 << (w & 7)
        self.added += 1

    def test_and_add(self, key: bytes) -> bool:
        """``key in self`` before adding it (one unpack; the doorkeeper's hot path).
        ``added`` counts only keys that were not in already."""
        if len(key) != KEY_LEN:
            return True
        m, arr = self._mask, self._array
        present = True
        for w in _WORDS.unpack_from(key):
            w &= m
            i, bit = w >> 3, 1 << (w & 7)
            if not arr[i] & bit:
                present = False
                arr[i] |= bit
        if not present:
            self.added += 1
        return present

    @property
    def stale(self) -> bool:
        return self.added > self.capacity

    @classmethod
    def build(cls, keys: list[bytes], capacity: int) -> KeyFilter:
        """A filter holding ``keys``, set in one vectorised pass."""
        f = cls(max(capacity, 2 * len(keys)))
        digests = [k for k in keys if len(k) == KEY_LEN]
        if digests:
            words = np.frombuffer(b"".join(digests), dtype="<u4").reshape(-1, KEY_LEN // 4)[:, :PROBES]
            idx = (words & np.uint32(f._mask)).ravel()
            arr = np.zeros(len(f._array), np.uint8)
            np.bitwise_or.at(arr, idx >> 3, (np.uint32(1) << (idx & 7)).astype(np.uint8))
            f._array = bytearray(arr.tobytes())
        return f

    def stats(self) -> dict:
        return {"bits": self.bits, "capacity": self.capacity, "added": self.added}


class Doorkeeper:
    """Remembers keys offered once, so a second offer can be told apart.

    TinyLFU's doorkeeper, used for the disk tier's admission: an answer that
    the memory bound pushes out before anyone asked for it again is written
    to disk only if its key was pushed out before. Traffic whose inputs never
    repeat (most sensor streams) thus costs the disk and its writer thread
    nothing, while an input that does come back, even after memory has
    forgotten it, gets its place on disk at its second eviction.

    Two Bloom filters take turns: keys go into the current one; when it has
    taken ``capacity`` keys, it becomes the previous one and a fresh filter
    starts. A key is remembered for between ``capacity`` and twice as many
    later offers. A false positive admits an entry the plain policy would
    have admitted too. Not locked: a lost bit under a race only costs one
    later admission.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1024, capacity)
        self._current = KeyFilter(self.capacity)
        self._previous: KeyFilter | None = None
        self.rotations = 0

    def seen_before(self, key: bytes) -> bool:
        """True if ``key`` was offered before (within the window); else remember it."""
        current = self._current
        if current.test_and_add(key):
            return True
        previous = self._previous
        if previous is not None and key in previous:
            return True  # and now in the current generation too, so it stays remembered
        if current.added >= self.capacity:
            self._previous = current
            self._current = KeyFilter(self.capacity)
            self.rotations += 1
        return False

    def stats(self) -> dict:
        return {"capacity": self.capacity, "remembered": self._current.added, "rotations": self.rotations}
