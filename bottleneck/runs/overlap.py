"""What an external cache shares with a run's training data: an image with the same bytes (SHA-256) as a training or
validation image, or of a lesion the head was trained on, would flatter an external evaluation, so `evaluate` leaves
it out, counts it and lists it in `excluded.csv`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import CacheData, load_cache
from ..errors import InputError
from ..heads import ClassMap, map_classes
from ..util import csv_unescape, write_csv

LEAKING = ("train", "val")  # the splits a head learned from (val picks the epoch; a final fit trains on it)
# Sources whose group ids name lesions in one namespace: ISIC 2019's lesion_id column reuses HAM10000's ids.
SHARED_LESION_IDS = {"ham10000", "isic2019"}
NO_GROUPS = {"", "folders", "unlabeled"}


@dataclass
class Overlap:
    """External images that are also among the run's training or validation data (left out of the metrics)."""

    checked: bool
    candidates: int = 0  # labeled images of a class the run knows, before the check
    same_bytes: int = 0
    same_lesion: int = 0
    lesions_compared: bool = False
    reason: str = ""  # why the check, or the lesion comparison, was not done

    @property
    def excluded(self) -> int:
        return self.same_bytes + self.same_lesion

    def message(self, name: str) -> str:
        if not self.checked:
            return f"the overlap of {name} with this run's training data could not be checked: {self.reason}"
        how = f"same bytes: {self.same_bytes:,}" + (f", same lesion: {self.same_lesion:,}" if self.lesions_compared
                                                     else f"; lesion ids not compared: {self.reason}")
        if not self.excluded:
            return (f"none of the {self.candidates:,} images of {name} is in this run's training or validation data "
                    f"({how})")
        return (f"{self.excluded:,} of {self.candidates:,} images of {name} are in this run's training or validation "
                f"data ({how}) and were left out")

    def record(self) -> dict:
        return {"checked": self.checked, "candidates": self.candidates, "excluded": self.excluded,
                "same_bytes": self.same_bytes, "same_lesion": self.same_lesion,
                "lesions_compared": self.lesions_compared, "reason": self.reason}


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
    """Whether a group id of one cache names the same lesion as the same id in the other."""
    a, b = str(train_attrs.get("source", "")), str(other_attrs.get("source", ""))
    if a in NO_GROUPS or b in NO_GROUPS:
        return False, f"the caches' sources ({a or 'unknown'}, {b or 'unknown'}) record no lesion ids"
    if a == b == "csv":  # a user-chosen column: only the same data set's ids mean the same thing
        same = train_attrs.get("dataset") == other_attrs.get("dataset")
        return same, "" if same else "group columns of two different CSV data sets"
    if a == b or {a, b} <= SHARED_LESION_IDS:
        return True, ""
    return False, f"sources {a} and {b} name lesions differently"


def find_overlap(train: CacheData, train_split: np.ndarray, other: CacheData,
                 rows: np.ndarray) -> tuple[Overlap, list[dict]]:
    """Which of `rows` of `other` have the bytes, or the lesion, of a training or validation row of `train`.

    Returns the counts and one dict per overlapping row (image_id, path, reason, the training row it matches)."""
    leak = np.isin(train_split, LEAKING)
    by_sha = {s: i for s, i in zip(train.sha256[leak], train.image_ids[leak]) if s}
    ok, reason = lesion_ids_comparable(train.attrs, other.attrs)
    by_group = {g: g for g in train.groups[leak] if g} if ok else {}
    if ok and not by_group:
        ok, reason = False, "the run's training cache has no group ids"
    elif ok and not any(other.groups[rows]):
        ok, reason = False, f"{other.path.name} has no group ids"
    overlap = Overlap(checked=True, candidates=len(rows), lesions_compared=ok, reason=reason)
    found = []
    for r in rows:
        sha, group = other.sha256[r], other.groups[r]
        if sha and sha in by_sha:
            overlap.same_bytes += 1
            found.append({"image_id": other.image_ids[r], "path": other.paths[r], "reason": "same bytes",
                          "matches": by_sha[sha], "row": int(r)})
        elif group and group in by_group:
            overlap.same_lesion += 1
            found.append({"image_id": other.image_ids[r], "path": other.paths[r], "reason": "same lesion",
                          "matches": group, "row": int(r)})
    return overlap, found


def check_external(run_dir: Path, own: Path, names: list[str], task: ClassMap, data: CacheData,
                    rows: np.ndarray) -> tuple[Overlap, list[dict], np.ndarray | None, list[str]]:
    """(overlap, overlapping rows, training labels in the run's classes or None, notes) of an external cache."""
    if not own.is_file():
        return (Overlap(False, len(rows), reason=f"its training cache {own} no longer exists; the majority "
                        "baseline is the evaluated images' majority class"), [], None, [])
    # ids, hashes, groups and labels (in the run's classes): no features needed
    train = map_classes(load_cache(own, features=False), task, names, strict=False, require_rows=False)
    split, gone = run_split(run_dir, train)
    overlap, found = find_overlap(train, split, data, rows)
    notes = [f"{gone} training/validation images of the run are no longer in {own.name}; they could not be "
             "checked for overlap"] if gone else []
    y_train = train.labels[(split == "train") & (train.labels >= 0)]
    return overlap, found, (y_train if len(y_train) else None), notes


def write_excluded(path: Path, found: list[dict]) -> None:
    """excluded.csv: each external image left out, why, and the training image id (same bytes) or lesion id."""
    import pandas as pd

    write_csv(path, pd.DataFrame(found).drop(columns="row"))
