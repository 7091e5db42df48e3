"""The split of a run: made from the seed, or reused from an earlier run, and checked; near-duplicates across groups
joined first (`--duplicates group`). One function for train-head, sweep and train-head --folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache import CacheData
from ..errors import InputError
from ..heads import SplitSpec, check_split, duplicate_groups, duplicates_record, load_split, make_split


def resolve_split(data: CacheData, spec: SplitSpec, split_from: Path | None, duplicates: str = "group",
                  folded: bool = False) -> tuple[np.ndarray, dict, np.ndarray]:
    """(split, its config record, the groups it was made with): made from the seed (near-duplicates across groups
    joined first, with `group`), or reused from an earlier run (with the groups it joined); checked either way.
    info["duplicates"]: what was found. folded (train-head --folds): `--test 0` (without --split-from) makes every
    labeled row "train", and a split is checked only where it has a test split."""
    if len(data.labels) == 0:
        raise InputError(f"cache {data.path} is empty (0 rows); run `bottleneck extract` into it first")
    everything = folded and not spec.test
    info = {"fractions": [1.0, 0.0, 0.0] if everything else [spec.train, spec.val, spec.test], "seed": spec.seed,
            "from": str(split_from) if split_from else None}
    near, groups = duplicate_groups(data, duplicates, split_from)
    if split_from:
        split, extra = load_split(split_from, data.image_ids)
        split[data.labels < 0] = ""
        info.update(extra)
    elif everything:
        split = np.where(data.labels >= 0, "train", "").astype(object)
    else:
        split = make_split(data.labels, groups, data.image_ids, data.class_names, spec)
    if not folded or (split == "test").any():
        check_split(split, data.labels, groups, data.class_names)
    info["duplicates"] = duplicates_record(duplicates, near, data, split, groups)
    return split, info, groups
