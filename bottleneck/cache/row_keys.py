"""Row keys: 64-bit hashes (BLAKE2b) of each row's image id and of its SHA-256 (`row_keys`, (N, 2) uint64 in the cache).

Finding which of a batch's images a cache already holds would otherwise mean reading and decoding every stored
id and SHA-256 (about 2 s per million rows); the keys are 16 bytes a row, read in milliseconds, and only rows
whose key matches are read in full to confirm. Caches written before the keys existed get them at their next
commit; until then the keys are computed from the strings.

Reading the keys is the one cost of finding rows that grows with the cache: 16 MB at a million rows.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .batch import ROW_FIELDS

KEYS = "row_keys"


def id_key(image_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "little")


def sha_key(sha256: str) -> int:
    return id_key(sha256)  # hashed again rather than truncated: ids and test data need not be uniform hex


def key_array(strings) -> np.ndarray:
    """(n,) uint64: `id_key` of each string, hashed in one pass."""
    blake = hashlib.blake2b
    digests = b"".join([blake(str(s).encode("utf-8", "surrogateescape"), digest_size=8).digest() for s in strings])
    return np.frombuffer(digests, "<u8").astype(np.uint64)


def keys_for(image_ids, shas) -> np.ndarray:
    """(n, 2) uint64: id key, bytes key."""
    return np.stack([key_array(image_ids), key_array(shas)], axis=1).reshape(-1, 2)


def read_keys(f, n: int) -> np.ndarray:
    """The keys of the first n rows of the open cache `f`, stored or (older caches) computed."""
    if KEYS in f and f[KEYS].shape[0] >= n:
        return f[KEYS][:n]
    from .store import decode_strings

    return keys_for(decode_strings(f["image_id"][:n]), decode_strings(f["sha256"][:n]))


def matching_rows(column: np.ndarray, wanted) -> dict[int, list[int]]:
    """key -> rows of `column` holding it, for the keys in `wanted`: one hash probe per row into the few wanted
    keys (about 18 ms per million rows, six times faster than binary searches; no sort of the column). Usually one
    row per key; more only on a collision."""
    import pandas as pd  # only here: a writer that never looks rows up does not pay for its import

    wanted = np.unique(np.asarray(wanted, dtype=np.uint64))
    if not len(wanted) or not len(column):
        return {}
    out: dict[int, list[int]] = {}
    for r in np.flatnonzero(pd.Index(wanted).get_indexer(column) >= 0):
        out.setdefault(int(column[r]), []).append(int(r))
    return out


def read_rows(f, rows: np.ndarray, n: int) -> dict:
    """The string columns, labels and views_ok of `rows` (sorted), read point by point when they are few and as
    whole columns when they are many; "meta" is {column: values} of the metadata columns; "phash" the rows'
    fingerprints (0, NO_FINGERPRINT, where a row or the cache has none)."""
    from .store import decode_strings, meta_dataset, read_phash, stored_meta_columns

    rows = np.asarray(rows, dtype=np.int64)
    whole = len(rows) > n // 8
    out = {}
    for name in (*ROW_FIELDS, "label", "views_ok"):
        if name not in f:
            out[name] = np.zeros(len(rows), bool)
            continue
        col = f[name][:n][rows] if whole else (f[name][rows] if len(rows) else f[name][:0])
        out[name] = decode_strings(col) if name in ROW_FIELDS else col
    phash = read_phash(f, n)  # 8 bytes a row
    out["phash"] = phash[rows] if phash is not None else np.zeros(len(rows), np.uint64)
    out["meta"] = {}
    for c in stored_meta_columns(f):
        ds = f[meta_dataset(c)]
        out["meta"][c] = decode_strings(ds[:n][rows] if whole else (ds[rows] if len(rows) else ds[:0]))
    return out
