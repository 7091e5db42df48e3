"""What an external cache shares with a run's training data. An image the head learned from, or a copy of one,
would flatter an external evaluation, so `evaluate` leaves it out, counts it and lists it in `excluded.csv`.

Five checks against the run's training and validation rows, each counted on its own (an image counts under the
first that catches it, in this order): the same bytes (SHA-256); the same image id (whatever either cache's
source: an uploader may resize `ISIC_0024412` and keep its name); the same lesion id, where both caches name
lesions the same way (the same source, or HAM10000/ISIC ids, `HAM_0000118` / `IL_0000123`, one namespace whatever
the source); a perceptual fingerprint within NEAR_BITS bits of any flip or quarter turn of a training image's
(re-encoded, resized, flipped copies); and features of cosine similarity >= NEAR_COSINE under the same backbone
configuration. What none can catch is said too: another photograph of the same lesion under another id, or a
heavily cropped or edited copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import CacheData, load_cache_within
from ..errors import InputError
from ..heads import ClassMap, indistinct_features, map_classes
from ..images import NEAR_BITS, NEAR_COSINE, NO_FINGERPRINT, hamming_min
from ..util import csv_unescape, write_csv

LEAKING = ("train", "val")  # the splits a head learned from (val picks the epoch; a final fit trains on it)
# Sources whose group ids name lesions in one namespace: ISIC 2019's lesion_id column reuses HAM10000's ids.
SHARED_LESION_IDS = {"ham10000", "isic2019"}
NO_GROUPS = {"", "folders", "unlabeled"}
# HAM10000 and ISIC archive lesion ids: the same lesion whatever source or CSV column they were read from.
LESION_ID = re.compile(r"(HAM|IL)_\d+")
# The checks, in the order an image is attributed to one, and how the message, report and excluded.csv name them.
KINDS = {"same_bytes": "same bytes", "same_id": "same image id", "same_lesion": "same lesion",
         "similar_picture": "similar picture", "similar_features": "similar features"}
WHAT = {"same_lesion": "lesion ids", "similar_picture": "pictures", "similar_features": "features"}
UNCATCHABLE = ("no check finds another photograph of the same lesion under another id, or a heavily cropped or "
               "edited copy")
FEATURE_ROWS, TRAIN_BLOCK = 2048, 8192  # (2048, 8192) float32 similarities (64 MiB) per matmul


@dataclass
class Overlap:
    """External images that are among the run's training or validation data, or near copies of them (left out of
    the metrics unless kept)."""

    checked: bool
    candidates: int = 0  # labeled images of a class the run knows, before the check
    counts: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # images by the first check matching them
    found_by: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # images each check matches on its own
    skipped: dict = field(default_factory=dict)  # check -> why it was not made
    lesion_ids: str = ""  # "all" (the sources agree), "HAM/ISIC ids" (those only) or "" (not compared)
    kept: bool = False  # --keep-overlap: found and counted, but evaluated
    reason: str = ""  # why nothing could be checked

    @property
    def found(self) -> int:
        return sum(self.counts.values())

    @property
    def excluded(self) -> int:
        return 0 if self.kept else self.found

    def message(self, name: str, refused: bool = False) -> str:
        if not self.checked:
            return f"the overlap of {name} with this run's training data could not be checked: {self.reason}"
        how = ", ".join(f"{what}: {self.counts[k]:,}" for k, what in KINDS.items() if k not in self.skipped)
        how += "".join(f"; {WHAT[k]} not compared: {why}" for k, why in self.skipped.items())
        if not self.found:
            return (f"none of the {self.candidates:,} images of {name} is in this run's training or validation data "
                    f"or a near copy of an image there ({how}); {UNCATCHABLE}")
        said = (f"{self.found:,} of {self.candidates:,} images of {name} are in this run's training or validation "
                f"data or near copies of images there ({how})")
        if refused:
            return said
        return said + (" and were kept (--keep-overlap): the metrics include them" if self.kept else
                       " and were left out") + f"; {UNCATCHABLE}"

    def record(self) -> dict:
        return {"checked": self.checked, "candidates": self.candidates, "found": self.found,
                "excluded": self.excluded, "kept": self.kept, **self.counts, "found_by": self.found_by,
                "not_compared": self.skipped, "lesions_compared": bool(self.lesion_ids),
                "lesion_ids": self.lesion_ids, "near_bits": NEAR_BITS, "near_cosine": NEAR_COSINE,
                "not_detectable": UNCATCHABLE, "reason": self.reason}


def run_split(run_dir: Path, data: CacheData) -> tuple[np.ndarray, int]:
    """(split of each row of the run's training cache, train/val images of split.csv no longer in it).

    Unlike a reused split, a cache that lost rows since the run is read anyway: the rest can still be checked."""
    import pandas as pd

    path = run_dir / "split.csv"
    if not path.is_file():
        raise InputError(f"{run_dir} has no split.csv; pass a run directory made by `bottleneck train-head`")
    df = csv_unescape(pd.read_csv(path, dtype=str, keep_default_na=False))  # ids as the cache holds them
    mapping = dict(zip(df["image_id"], df["split"]))
    split = np.array([mapping.get(i, "") for i in data.image_ids], dtype=object)
    leaking = set(df["image_id"][df["split"].isin(LEAKING)])
    return split, len(leaking - set(data.image_ids))


def lesion_ids_comparable(train_attrs: dict, other_attrs: dict) -> tuple[bool, str]:
    """Whether every group id of one cache names the same lesion as the same id in the other (HAM/ISIC ids do
    whatever the sources: `lesion_matcher`)."""
    a, b = str(train_attrs.get("source", "")), str(other_attrs.get("source", ""))
    if a in NO_GROUPS or b in NO_GROUPS:
        return False, f"the caches' sources ({a or 'unknown'}, {b or 'unknown'}) record no lesion ids"
    if a == b == "csv":  # a user-chosen column: only the same data set's ids mean the same thing
        same = train_attrs.get("dataset") == other_attrs.get("dataset")
        return same, "" if same else "group columns of two different CSV data sets"
    if a == b or {a, b} <= SHARED_LESION_IDS:
        return True, ""
    return False, f"sources {a} and {b} name lesions differently"


def lesion_matcher(train: CacheData, leak: np.ndarray, other: CacheData,
                   rows: np.ndarray) -> tuple[dict, str, str]:
    """({lesion id: training row}, which ids are compared ("all", "HAM/ISIC ids" or ""), why not) for the lesion
    check: every id when the sources name lesions alike, else the HAM/ISIC ids found on both sides."""
    ok, reason = lesion_ids_comparable(train.attrs, other.attrs)
    theirs = {g for g in other.groups[rows] if g}
    if ok:
        mine = {g: int(r) for r, g in zip(leak[::-1], train.groups[leak][::-1]) if g}  # the first row of a lesion
        if not mine:
            return {}, "", "the run's training cache has no group ids"
        return mine, ("all" if theirs else ""), ("" if theirs else f"{other.path.name} has no group ids")
    mine = {g: int(r) for r, g in zip(leak[::-1], train.groups[leak][::-1]) if LESION_ID.fullmatch(g)}
    if mine and any(LESION_ID.fullmatch(g) for g in theirs):
        return mine, "HAM/ISIC ids", ""
    return {}, "", reason


def fingerprints(data: CacheData) -> np.ndarray | None:
    """(N,) uint64 perceptual fingerprints of a cache's rows (NO_FINGERPRINT where a row has none), None when the
    cache stores none (written before fingerprints were)."""
    return getattr(data, "phash", None)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def nearest_features(x, x_rows: np.ndarray, y, y_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row `x_rows` of features `x`, the highest cosine similarity with a row `y_rows` of `y`, and that
    row ((n,) float32, (n,) int; -inf and -1 when `y_rows` is empty). `x` and `y` are (N, D) arrays or streamed
    readers (`x[rows]` reads rows either way). Blockwise products of float32 unit vectors, (2048, 8192) at a time:
    1,000 x 100,000 rows of 2,048 features in seconds, in well under a gigabyte."""
    best = np.full(len(x_rows), -np.inf, dtype=np.float32)
    where = np.full(len(x_rows), -1, dtype=np.int64)
    for xs in range(0, len(x_rows), FEATURE_ROWS):
        a = _unit(x[x_rows[xs:xs + FEATURE_ROWS]])  # (n, D)
        top, at = best[xs:xs + FEATURE_ROWS], where[xs:xs + FEATURE_ROWS]  # views: filled in place
        for ys in range(0, len(y_rows), TRAIN_BLOCK):
            sims = a @ _unit(y[y_rows[ys:ys + TRAIN_BLOCK]]).T  # (n, b)
            k = sims.argmax(axis=1)
            v = sims[np.arange(len(a)), k]
            better = v > top
            top[better], at[better] = v[better], y_rows[ys + k[better]]
    return best, where


def picture_matches(train: CacheData, leak: np.ndarray, other: CacheData,
                    rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(training row within NEAR_BITS of each of `rows`, or -1; the fewest bits; why the check was not made)."""
    mine, theirs = fingerprints(train), fingerprints(other)
    sides = ((f"the run's training cache {train.path.name}", mine, leak), (other.path.name, theirs, rows))
    lacking = [name for name, h, r in sides if h is None or not (h[r] != NO_FINGERPRINT).any()]
    if lacking:
        one = len(lacking) == 1
        return None, None, (f"{' and '.join(lacking)} {'has' if one else 'have'} no perceptual fingerprints; rerun "
                            f"the `extract` command that wrote {'it' if one else 'each'} to add them (it decodes the "
                            "images only, without the CNN)")
    dist, where = hamming_min(theirs[rows], mine[leak])
    return np.where(dist <= NEAR_BITS, leak[where], -1), dist, ""


def feature_matches(train: CacheData, leak: np.ndarray, other: CacheData,
                    rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(training row of cosine similarity >= NEAR_COSINE with each of `rows`, or -1; the highest similarity; why
    the check was not made)."""
    diff = train.config.mismatch(other.config)
    if diff:
        diff = diff.replace("(cache)", f"({other.path.name})").replace("(this run)", "(training)")
        return None, None, (f"{other.path.name} and the run's training cache come from other backbone "
                            f"configurations ({diff})")
    if len(train.features) != len(train.labels):
        return None, None, "the run's training features were not read"
    indistinct = indistinct_features(train.features)
    if indistinct:
        return None, None, f"the run's training cache: {indistinct}"
    best, where = nearest_features(other.features, rows, train.features, leak)
    return np.where(best >= NEAR_COSINE, where, -1), best, ""


def find_overlap(train: CacheData, train_split: np.ndarray, other: CacheData, rows: np.ndarray,
                 keep: bool = False) -> tuple[Overlap, list[dict]]:
    """Which of `rows` of `other` match a training or validation row of `train`, by each check (`keep`: they
    will be evaluated all the same, --keep-overlap).

    Returns the counts and one dict per matching row: image_id, path, reason (the first check matching it), the
    training image id it matches, the lesion id (same lesion), the bits apart (similar picture) or the cosine
    similarity (similar features)."""
    leak = np.flatnonzero(np.isin(train_split, LEAKING))
    overlap = Overlap(checked=True, candidates=len(rows), kept=keep)
    hit = {k: np.full(len(rows), -1, dtype=np.int64) for k in KINDS}  # check -> training row matched, or -1
    by_sha = {s: int(r) for r, s in zip(leak[::-1], train.sha256[leak][::-1]) if s}
    hit["same_bytes"][:] = [by_sha.get(s, -1) if s else -1 for s in other.sha256[rows]]
    by_id = {i: int(r) for r, i in zip(leak, train.image_ids[leak])}
    hit["same_id"][:] = [by_id.get(i, -1) for i in other.image_ids[rows]]
    by_group, overlap.lesion_ids, why = lesion_matcher(train, leak, other, rows)
    if overlap.lesion_ids:
        hit["same_lesion"][:] = [by_group.get(g, -1) if g else -1 for g in other.groups[rows]]
    else:
        overlap.skipped["same_lesion"] = why
    measure = {}
    for kind, check in (("similar_picture", picture_matches), ("similar_features", feature_matches)):
        matched, measure[kind], why = check(train, leak, other, rows)
        if matched is None:
            overlap.skipped[kind] = why
        else:
            hit[kind] = matched
    taken = np.zeros(len(rows), dtype=bool)
    for kind in KINDS:
        overlap.found_by[kind] = int((hit[kind] >= 0).sum())
        overlap.counts[kind] = int(((hit[kind] >= 0) & ~taken).sum())
        taken |= hit[kind] >= 0
    found = []
    for i in np.flatnonzero(taken):
        kind = next(k for k in KINDS if hit[k][i] >= 0)
        t, r = hit[kind][i], rows[i]
        found.append({"image_id": other.image_ids[r], "path": other.paths[r], "reason": KINDS[kind],
                      "matches": train.image_ids[t], "lesion_id": train.groups[t] if kind == "same_lesion" else "",
                      "bits": int(measure[kind][i]) if kind == "similar_picture" else None,
                      "cosine": round(float(measure[kind][i]), 4) if kind == "similar_features" else None,
                      "row": int(r)})
    return overlap, found


def check_external(run_dir: Path, own: Path, names: list[str], task: ClassMap, data: CacheData, rows: np.ndarray,
                   memory_gb: float, keep: bool = False) -> tuple[Overlap, list[dict], np.ndarray | None, list[str]]:
    """(overlap, overlapping rows, training labels in the run's classes or None, notes) of an external cache."""
    if not own.is_file():
        return (Overlap(False, len(rows), kept=keep, reason=f"its training cache {own} no longer exists; the "
                        "majority baseline is the evaluated images' majority class"), [], None, [])
    # ids, hashes, groups, fingerprints and features (within the budget), labels in the run's classes
    train = map_classes(load_cache_within(own, memory_gb), task, names, strict=False, require_rows=False)
    split, gone = run_split(run_dir, train)
    overlap, found = find_overlap(train, split, data, rows, keep)
    notes = [f"{gone} training/validation images of the run are no longer in {own.name}; they could not be "
             "checked for overlap"] if gone else []
    y_train = train.labels[(split == "train") & (train.labels >= 0)]
    return overlap, found, (y_train if len(y_train) else None), notes


def write_excluded(path: Path, found: list[dict]) -> None:
    """excluded.csv (overlap.csv when kept): each overlapping external image, the check that found it, the
    training image it matches, and the lesion id, bits apart or cosine similarity."""
    import pandas as pd

    frame = pd.DataFrame(found).drop(columns="row")
    frame["bits"] = frame["bits"].astype("Int64")  # whole numbers, blank where another check matched
    write_csv(path, frame)
