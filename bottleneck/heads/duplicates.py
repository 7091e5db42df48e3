"""Near-duplicates among a cache's own rows: pairs of images whose perceptual hashes differ in at most NEAR_BITS bits
from one of the other's flips and quarter turns, or whose features have a cosine similarity of at least
NEAR_COSINE. A grouped split keeps a lesion id in one split; two ids of the same picture are only kept together
once such a pair is found (`splits.join_near_duplicates`). Numpy only, and fast enough for 100,000 rows:

- hashes, exact: two 64-bit hashes within r bits agree exactly on at least s of r + s chunks (pigeonhole), so every
  pair within r bits shares the key made of some s of those chunks. Rows are bucketed by each such key, against all
  eight dihedral variants of every hash, and each candidate is verified. s is chosen so that the keys are long
  enough to keep the candidates few (s = 2 at r = 6: 28 keys of about 16 bits).
- features, exact up to EXACT_ROWS rows: every pair's cosine, blockwise (N^2 D multiply-adds). Above it, candidates
  are the pairs that share a bucket of sign-random-projection bits (SimHash) in any of several tables, sized from a
  sample of the data's own pairs so that a pair at the threshold is found with probability RECALL; each candidate
  is then verified exactly. Not exact: a pair just above the threshold can be missed (rarely, the recorded `recall`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb, log

import numpy as np

from ..images import NEAR_BITS, NEAR_COSINE, NO_FINGERPRINT, dihedral_variants

EXACT_ROWS = 20_000  # up to this many rows the cosine search compares every pair
SKETCH_BITS = 256  # sign-random-projection bits per row, above EXACT_ROWS
RECALL = 0.999  # wanted chance that the bucket search finds a pair at exactly the threshold
MAX_TABLES = 160
SAMPLE_PAIRS = 4000  # random pairs that size the tables, and tell whether the features separate images at all
DEGENERATE_SHARE = 0.5  # half of all pairs above the threshold: the features cannot tell images apart


@dataclass
class Pairs:
    """Near-duplicate pairs of rows: (P, 2) int64 with i < j, and what found them."""

    rows: np.ndarray
    bits: np.ndarray  # (P,) int: fewest bits between the hashes over the flips and turns; -1 where not compared
    cosine: np.ndarray  # (P,) float: feature cosine similarity; nan where not found by it
    checks: dict  # check name -> how it was searched (or why not)

    @classmethod
    def empty(cls, checks: dict | None = None) -> Pairs:
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.int64), np.zeros(0), checks or {})

    def kinds(self) -> np.ndarray:
        """(P,) "phash", "cosine" or "phash+cosine": which checks found each pair."""
        h, c = self.bits >= 0, ~np.isnan(self.cosine)
        return np.where(h & c, "phash+cosine", np.where(h, "phash", "cosine"))


# --- perceptual hashes -------------------------------------------------------------------------------------------

def _chunking(n: int, max_bits: int) -> tuple[np.ndarray, int]:
    """(chunk bounds over the 64 bits, s): r + s chunks, keys of s of them; s keeps the estimated work lowest."""
    def work(s):  # per key: bucketing the 9 N keys, then ~10 passes over each candidate
        m = max_bits + s
        key_bits = 63 * s / m
        return comb(m, s) * (9 * n * (1 + key_bits / 16) + 10 * 8.0 * n * n / 2 ** key_bits)

    s = min(range(1, 3), key=work)  # s = 3 looks cheaper on paper, but its tables outgrow the CPU cache
    return np.linspace(1, 64, max_bits + s + 1).round().astype(int), s  # bit 0 is always 0: never a chunk's


def _keys(h: np.ndarray, bounds: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    """(the bits of `chunks` of each hash packed side by side, how many bits that is); uint16 when they fit (numpy
    radix-sorts those)."""
    key = np.zeros(h.shape, np.uint64)
    shift = 0
    for c in chunks:
        lo, width = int(bounds[c]), int(bounds[c + 1] - bounds[c])
        key |= ((h >> np.uint64(lo)) & np.uint64((1 << width) - 1)) << np.uint64(shift)
        shift += width
    return key.astype(np.uint16 if shift <= 16 else np.uint32 if shift <= 32 else np.uint64), shift


def _bucket_join(a: np.ndarray, b: np.ndarray, key_bits: int, block: int = 1 << 22):
    """Yield (i, j) index arrays of every a[i] == b[j], at most about `block` pairs at a time. `a` is sorted into
    buckets (a table of 2^key_bits starts when that is small), `b` looked up in them."""
    order = np.argsort(a, kind="stable")
    if key_bits <= 22:
        counts = np.bincount(a, minlength=1 << key_bits)
        lo = (np.cumsum(counts) - counts)[b]
        counts = counts[b]
    else:
        sa = a[order]
        lo = np.searchsorted(sa, b, "left")
        counts = np.searchsorted(sa, b, "right") - lo
    hit = np.flatnonzero(counts)
    counts, lo = counts[hit], lo[hit]
    ends = np.cumsum(counts)
    start = 0
    while start < len(hit):
        base = ends[start - 1] if start else 0
        stop = min(len(hit), max(start + 1, int(np.searchsorted(ends, base + block, "right"))))
        c = counts[start:stop]
        at = np.repeat(np.arange(start, stop), c)
        offset = np.arange(len(at)) - np.repeat(np.cumsum(c) - c, c)
        yield order[lo[at] + offset], hit[at]
        start = stop


def hash_pairs(hashes: np.ndarray, max_bits: int = NEAR_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) whose hashes differ in at most `max_bits` bits from one of the other's eight flips
    and quarter turns, exactly: ((P, 2) int64, (P,) int bits). Rows with NO_FINGERPRINT are never paired."""
    hashes = np.asarray(hashes, np.uint64)
    rows = np.flatnonzero(hashes != NO_FINGERPRINT)
    h = hashes[rows]
    variants = dihedral_variants(h)  # (n, 8)
    n = len(h)
    bounds, s = _chunking(n, max_bits)
    found_i, found_j, found_d = [], [], []
    owner = np.tile(np.arange(n), 8)  # variants.T.ravel(): all the hashes' variant 0, then 1, ...
    flat = variants.T.ravel()
    for chunks in combinations(range(len(bounds) - 1), s):
        (a, bits), (b, _) = _keys(h, bounds, chunks), _keys(flat, bounds, chunks)
        for i, k in _bucket_join(a, b, bits):
            j = owner[k]
            keep = i < j
            # the variant that shares the key: a pair within max_bits through its closest variant is found there
            i, j, d = i[keep], j[keep], np.bitwise_count(h[i[keep]] ^ flat[k[keep]])
            near = d <= max_bits
            found_i.append(i[near])
            found_j.append(j[near])
            found_d.append(d[near])
    if not found_i or not sum(len(x) for x in found_i):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    by = np.lexsort((d, i.astype(np.int64) * n + j))  # each pair's fewest bits first
    i, j, d = i[by], j[by], d[by]
    first = np.flatnonzero(np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])])
    return np.stack([rows[i[first]], rows[j[first]]], axis=1).astype(np.int64), d[first].astype(np.int64)


# --- features ----------------------------------------------------------------------------------------------------

def _read(features, start: int, stop: int) -> np.ndarray:
    """Rows start..stop as float32, from an array or a streamed reader (anything indexed by an array of rows)."""
    return np.asarray(features[np.arange(start, stop)], dtype=np.float32)


def _norms(features, block: int) -> np.ndarray:
    n = len(features)
    return np.concatenate([np.linalg.norm(_read(features, s, min(n, s + block)), axis=1) for s in range(0, n, block)]
                          or [np.zeros(0, np.float32)])


def _cosines(features, norms: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1 << 14) -> np.ndarray:
    """Cosine similarity of the row pairs (i, j), read `block` pairs at a time; 0 where a row is all zeros."""
    out = np.zeros(len(i), np.float32)
    for s in range(0, len(i), block):
        a, b = i[s:s + block], j[s:s + block]
        dots = np.einsum("nd,nd->n", np.asarray(features[a], np.float32), np.asarray(features[b], np.float32))
        out[s:s + block] = dots / np.maximum(norms[a] * norms[b], 1e-12)
    return out


def indistinct_features(features, threshold: float = NEAR_COSINE, rng: np.random.Generator | None = None,
                        norms: np.ndarray | None = None) -> str | None:
    """Why a cosine search would find nothing but noise (a random-init backbone's features, nearly parallel for
    every image: at least DEGENERATE_SHARE of SAMPLE_PAIRS random pairs of rows at or above `threshold`), or None
    when the features tell images apart. train-head's search and evaluate's overlap check both ask."""
    n = len(features)
    if n < 2:
        return None
    rng = np.random.default_rng(0) if rng is None else rng
    norms = _norms(features, 2048) if norms is None else norms
    si, sj = rng.integers(0, n, SAMPLE_PAIRS), rng.integers(0, n, SAMPLE_PAIRS)
    keep = si != sj
    sample = _cosines(features, norms, si[keep], sj[keep])
    share = float((sample >= threshold).mean()) if len(sample) else 0.0
    if share < DEGENERATE_SHARE:
        return None
    return (f"{share:.0%} of random pairs of rows have a cosine of at least {threshold:g}: these features do not "
            "tell images apart (an untrained backbone's?)")


def cosine_pairs(features, threshold: float = NEAR_COSINE, exact_rows: int = EXACT_ROWS, seed: int = 0,
                 block: int = 2048) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pairs of rows (i < j) whose features have a cosine similarity of at least `threshold`: ((P, 2), (P,), how).
    Exact up to `exact_rows` rows; above, from sign-random-projection buckets (see the module's docstring).
    Features that do not tell images apart (a random-init backbone's) are not searched: `how` says so."""
    n = len(features)
    none = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    if n < 2:
        return *none, {"search": "exact", "rows": n}
    norms = _norms(features, block)
    rng = np.random.default_rng(seed)
    why = indistinct_features(features, threshold, rng, norms)
    if why:
        return *none, {"search": "skipped", "reason": why}
    if n <= exact_rows:
        return *_exact_cosine(features, norms, threshold, block), {"search": "exact", "rows": n}
    return _bucket_cosine(features, norms, threshold, rng, block)


def _exact_cosine(features, norms, threshold, block):
    n = len(features)
    unit = np.concatenate([_read(features, s, min(n, s + block)) for s in range(0, n, block)])
    unit /= np.maximum(norms, 1e-12)[:, None]
    found_i, found_j, found_c = [], [], []
    for s in range(0, n, block):
        sims = unit[s:s + block] @ unit[s:].T  # (b, n - s): the pairs with j >= i's block
        i, j = np.nonzero(sims >= threshold)
        keep = i < j
        found_i.append(s + i[keep])
        found_j.append(s + j[keep])
        found_c.append(sims[i[keep], j[keep]])
    return np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1).astype(np.int64), \
        np.concatenate(found_c)


def _sketch(features, planes: np.ndarray, block: int) -> np.ndarray:
    """(N, SKETCH_BITS / 8) uint8: the sign of each row's projection on each random hyperplane, packed."""
    n = len(features)
    return np.concatenate([np.packbits(_read(features, s, min(n, s + block)) @ planes > 0, axis=1)
                           for s in range(0, n, block)])


def _bucket_cosine(features, norms, threshold, rng, block):
    n = len(features)
    planes = rng.standard_normal((_read(features, 0, 1).shape[1], SKETCH_BITS)).astype(np.float32)
    sketch = _sketch(features, planes, block)  # (N, 32) uint8
    words = sketch.view(np.uint64)  # (N, 4)
    agree_t = 1 - np.arccos(threshold) / np.pi  # chance that one hyperplane does not separate a pair at threshold
    si, sj = rng.integers(0, n, SAMPLE_PAIRS), rng.integers(0, n, SAMPLE_PAIRS)
    agree = 1 - np.bitwise_count(words[si] ^ words[sj]).sum(axis=1) / SKETCH_BITS  # random pairs
    # The fewest bits per table that keep each table's expected random collisions near 4 N, and the tables needed.
    k = next((k for k in range(12, 65, 2) if n * n / 2 * np.mean(agree ** k) <= 4 * n), 64)
    tables = min(MAX_TABLES, int(np.ceil(log(1 - RECALL) / log(1 - agree_t ** k))))
    recall = 1 - (1 - agree_t ** k) ** tables
    # a pair at the threshold differs in SKETCH_BITS * (1 - agree_t) bits on average: far beyond it, not a candidate
    limit = SKETCH_BITS * (1 - agree_t) + 6 * np.sqrt(SKETCH_BITS * agree_t * (1 - agree_t))
    bits = np.unpackbits(sketch, axis=1)  # (N, SKETCH_BITS) uint8
    found = []
    for _ in range(tables):
        chosen = rng.choice(SKETCH_BITS, k, replace=False)
        key = (bits[:, chosen].astype(np.uint64) << np.arange(k, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
        order = np.argsort(key)
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        size = np.diff(np.r_[starts, n])
        end = np.repeat(starts + size, size)  # each sorted position's bucket end
        after = end - np.arange(n) - 1  # later members of its bucket
        a = np.repeat(np.arange(n), after)
        b = a + 1 + (np.arange(len(a)) - np.repeat(np.cumsum(after) - after, after))
        i, j = np.minimum(order[a], order[b]), np.maximum(order[a], order[b])
        close = np.bitwise_count(words[i] ^ words[j]).sum(axis=1) <= limit
        found.append(i[close].astype(np.int64) * n + j[close])
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    i, j = pairs // n, pairs % n
    cos = _cosines(features, norms, i, j)
    near = cos >= threshold
    how = {"search": "buckets", "rows": n, "bits_per_table": int(k), "tables": int(tables),
           "recall": round(float(recall), 4), "candidates": int(len(pairs))}
    return np.stack([i[near], j[near]], axis=1).astype(np.int64), cos[near], how


# --- both ----------------------------------------------------------------------------------------------------------

def near_duplicates(features, hashes: np.ndarray | None, keys: np.ndarray, seed: int = 0) -> Pairs:
    """Near-duplicate pairs of rows with different group `keys` (a lesion's own images are not a finding), by
    perceptual hash (when the cache has them) and by feature cosine."""
    checks = {}
    found = {}
    if hashes is None or not (np.asarray(hashes) != NO_FINGERPRINT).any():
        checks["phash"] = {"search": "skipped", "reason": "the cache has no perceptual fingerprints (rerun its "
                           "extract command to add them)"}
    else:
        p, d = hash_pairs(hashes)
        found["phash"] = (p, d)
        checks["phash"] = {"search": "exact", "max_bits": NEAR_BITS, "rows": int((hashes != NO_FINGERPRINT).sum())}
    p, c, how = cosine_pairs(features, seed=seed)
    found["cosine"] = (p, c)
    checks["cosine"] = how | {"threshold": NEAR_COSINE}
    n = max(len(keys), 1)
    merged: dict[int, list] = {}
    for kind, (p, v) in found.items():
        for (i, j), x in zip(p.tolist(), v.tolist()):
            if keys[i] != keys[j]:
                merged.setdefault(i * n + j, [-1, np.nan])[0 if kind == "phash" else 1] = x
    if not merged:
        return Pairs.empty(checks)
    codes = np.array(sorted(merged), np.int64)
    vals = [merged[c] for c in codes.tolist()]
    return Pairs(np.stack([codes // n, codes % n], axis=1), np.array([v[0] for v in vals], np.int64),
                 np.array([v[1] for v in vals], float), checks)
