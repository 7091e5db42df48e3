"""What one batch of a cache's journal holds: its arrays, built from the extractor's row dicts (`row_arrays`), and
the checks a batch passes before a commit applies it (`check_batch`; `storable_text` for one built here).

A batch is a dict of arrays (`ARRAYS`): per row the string columns, the label, the original size, the features,
the flags and the fingerprint; per batch the failed images, the metadata column names and the views. Batches of
older versions lack the metadata and fingerprint arrays, and are read as having none.
"""

from __future__ import annotations

import numpy as np

ROW_FIELDS = ("image_id", "path", "group", "sha256")  # string columns, one per row
# What a batch holds: name -> (dimensions, dtype kind); "D" stands for the cache's dtype. `meta_names` (C,) names
# the metadata columns (`extract --meta-columns`) and `meta` (n, C) holds each row's values.
ARRAYS = {**{k: (1, "U") for k in (*ROW_FIELDS, "label")}, "has_label": (1, "b"), "has_features": (1, "b"),
          "size": (2, "i"), "features": (2, "D"), "failed": (2, "U"), "view_lo": (0, "i"), "views": (3, "D"),
          "meta_names": (1, "U"), "meta": (2, "U"), "phash": (1, "u"), "has_phash": (1, "b")}
META_ARRAYS = ("meta_names", "meta")  # absent from batches journaled by versions that stored no metadata columns
PHASH_ARRAYS = ("phash", "has_phash")  # each row's perceptual fingerprint, absent from batches of older versions
NOT_PER_ROW = ("failed", "meta_names")  # arrays whose first dimension is not the batch's rows


def row_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """A batch's per-row arrays (and `meta_names`) from its row dicts (see CacheWriter.write_batch), in one pass
    over the rows."""
    n = len(rows)
    cols = list(zip(*[(r["image_id"], r["path"], r["group"], r["sha256"], r["label"], r["width"], r["height"],
                       r.get("has_features", True), r.get("phash"), r.get("meta")) for r in rows])) or [()] * 10
    ids, paths, groups, shas, labels, widths, heights, has_features, phash, meta = cols
    names = list(dict.fromkeys(c for m in meta if m for c in m)) if any(meta) else []
    text = {k: np.array([v or "" for v in col], dtype=str).reshape(n)
            for k, col in zip(ROW_FIELDS, (ids, paths, groups, shas))}
    return {**text,
            "meta_names": np.array(names, dtype=str).reshape(len(names)),
            "meta": np.array([[(m or {}).get(c, "") for c in names] for m in meta], dtype=str).reshape(n, len(names)),
            "label": np.array([v if v is not None else "" for v in labels], dtype=str).reshape(n),
            "has_label": np.array([v is not None for v in labels], dtype=bool).reshape(n),
            "size": np.array([widths, heights], dtype=np.int32).reshape(2, n).T.copy(),
            "has_features": np.array(has_features, dtype=bool).reshape(n),
            "phash": np.array([v or 0 for v in phash], dtype=np.uint64).reshape(n),
            "has_phash": np.array([v is not None for v in phash], dtype=bool).reshape(n)}


def storable_text(rows: list[dict], failed=()) -> bool:
    """Whether every string of these rows (ids, paths, groups, digests, labels, metadata names and values) and
    failed images is a str the cache's UTF-8 columns can hold: no NUL, no lone surrogate. What `check_batch` checks of
    a batch's strings, read from the strings themselves before they become arrays (whose strings they are, less any
    trailing NUL); False for anything that is not a str, which `check_batch` then judges."""
    try:
        text = "".join([s for r in rows for s in (r["image_id"], r["path"], r["group"], r["sha256"], r["label"]) if s]
                       + [v for r in rows if r.get("meta") for kv in r["meta"].items() for v in kv]
                       + [s for x in failed for s in x])
    except TypeError:
        return False
    return "\0" not in text and utf8_ok(text)


def batch_meta(arrays: dict) -> tuple[list[str], np.ndarray]:
    """A journaled batch's metadata columns and its (n, C) values; none for a batch of an older version."""
    if "meta_names" not in arrays:
        return [], np.zeros((len(arrays["image_id"]), 0), str)
    return [str(c) for c in arrays["meta_names"]], arrays["meta"]


def utf8_ok(text: str) -> bool:
    """Whether `text` can be stored in the cache's UTF-8 string columns (a non-UTF-8 file name decodes, on
    POSIX, to lone surrogates, which cannot)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def batch_phash(arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """A journaled batch's fingerprints (n,) uint64 and whether each row has one (n,) bool; none for a batch of an
    older version."""
    if "phash" not in arrays:
        n = len(arrays["image_id"])
        return np.zeros(n, np.uint64), np.zeros(n, bool)
    return arrays["phash"].astype(np.uint64), arrays["has_phash"].astype(bool)


def check_batch(arrays: dict, num_features: int, dtype: str) -> None:
    """Raise DamagedBatch unless `arrays` is a whole batch of this cache's configuration: every array, each
    of the expected rank, dtype and row count."""
    optional = [group for group in (META_ARRAYS, PHASH_ARRAYS) if not any(k in arrays for k in group)]
    expected = {k: v for k, v in ARRAYS.items() if not any(k in group for group in optional)}
    if set(arrays) != set(expected):
        raise DamagedBatch(f"arrays {sorted(arrays)} instead of {sorted(expected)}")
    n = len(arrays["image_id"])
    for name, (ndim, kind) in expected.items():
        a = arrays[name]
        want = np.dtype(dtype) if kind == "D" else None
        if a.ndim != ndim or (want is not None and a.dtype != want) or (want is None and a.dtype.kind != kind):
            raise DamagedBatch(f"{name} is {a.dtype} of shape {a.shape}")
        if ndim and name not in NOT_PER_ROW and a.shape[0] != n:
            raise DamagedBatch(f"{name} has {a.shape[0]} rows, image_id {n}")
    if "meta" in arrays and arrays["meta"].shape[1] != len(arrays["meta_names"]):
        raise DamagedBatch(f"meta of shape {arrays['meta'].shape} for {len(arrays['meta_names'])} meta_names")
    if arrays["size"].shape[1] != 2 or arrays["failed"].shape[1] != 3:
        raise DamagedBatch(f"size of shape {arrays['size'].shape}, failed of shape {arrays['failed'].shape}")
    if arrays["features"].shape[1] != num_features or arrays["views"].shape[2] != num_features:
        raise DamagedBatch(f"features of shape {arrays['features'].shape} and views of shape "
                           f"{arrays['views'].shape}, where the cache holds {num_features} features")
    if not 0 <= int(arrays["view_lo"]) <= arrays["views"].shape[1]:
        raise DamagedBatch(f"view_lo {int(arrays['view_lo'])} with {arrays['views'].shape[1]} views")
    for name, (_, kind) in expected.items():
        text = "".join(arrays[name].ravel().tolist()) if kind == "U" else ""
        if not utf8_ok(text):
            raise DamagedBatch(f"{name} holds a name that is not valid UTF-8")
        if "\0" in text:  # HDF5's strings end at a NUL: the commit would fail on every rerun
            raise DamagedBatch(f"{name} holds a NUL character")


class DamagedBatch(Exception):
    """A journaled batch that cannot be applied; the message says why."""
