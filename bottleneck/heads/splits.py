"""Train/validation/test splits: grouped, stratified, deterministic, saved with every run.

HAM10000 holds several images of one lesion; a split that puts one image of a lesion in train and another
in test measures memory, not skill. So whole groups (lesions, patients) go to one split, each class is
spread over the splits in proportion, and the assignment depends only on the seed and the data. The same holds
inside train+val for a sweep: its K cross-validation folds are grouped and stratified too (`make_folds`), and so is
the slice of a part's training rows that watches early stopping (`early_stopping_slice`, `cv_parts`).
Two ids of one picture are kept together too: near-duplicate pairs across groups (`duplicates.py`) join their groups
before splitting (`join_near_duplicates`), and the joined groups are recorded so a reused split keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import CacheData, take
from ..errors import InputError
from ..stats import group_keys
from ..util import check_split_file, csv_unescape, write_csv
from .duplicates import Pairs, near_duplicates

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 0

    @classmethod
    def held_out(cls, val: float, test: float, seed: int = 0) -> SplitSpec:
        """The split `--val F --test F` asks for: the rest trains."""
        return cls(round(1 - val - test, 10), val, test, seed)

    def fractions(self) -> np.ndarray:
        f = np.array([self.train, self.val, self.test], dtype=float)
        if (f <= 0).any() or abs(f.sum() - 1) > 1e-6:
            raise InputError(f"split fractions should be positive and sum to 1; received train={self.train}, "
                             f"val={self.val}, test={self.test}")
        return f


def make_split(labels: np.ndarray, groups: np.ndarray, image_ids: np.ndarray, class_names: list[str],
               spec: SplitSpec = SplitSpec()) -> np.ndarray:
    """Assign each row to "train", "val" or "test" ("" for unlabeled rows, which no split can use).

    Rows sharing a non-empty group move together; a row without a group is its own group. A group is
    stratified under the rarest class it contains, so groups holding minority classes are spread too.
    Fails, naming the class, when a class has too few groups to appear in all three splits.
    """
    fractions = spec.fractions()
    labels = np.asarray(labels)
    out = np.full(len(labels), "", dtype=object)
    labeled = np.flatnonzero(labels >= 0)
    if len(labeled) == 0:
        raise InputError("the cache has no labeled images; train-head needs labels (extract with class "
                         "folders or --label-column)")
    present = np.unique(labels[labeled])
    if len(present) < 2:
        raise InputError(f"the cache holds a single class ({class_names[present[0]]!r}); a classifier needs "
                         "at least two")

    # Group key: the group id when there is one, else the image id (sorted: independent of row order).
    keys = group_keys(groups[labeled], image_ids[labeled])
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(labels[labeled], minlength=len(class_names))
    members: list[list[int]] = [[] for _ in uniq]
    for row, k in zip(labeled, inverse):
        members[k].append(row)
    stratum = np.array([min(labels[m], key=lambda c: (counts[c], c)) for m in members])

    rng = np.random.default_rng(spec.seed)
    for c in np.unique(stratum):
        gids = np.flatnonzero(stratum == c)
        if len(gids) < 3:
            n_img = sum(len(members[g]) for g in gids)
            unit = "groups" if any(keys[g].startswith("g:") for g in gids) else "images"
            raise InputError(f"class {class_names[c]!r} has only {len(gids)} {unit} ({n_img} images); each class "
                             "needs at least 3 to appear in train, validation and test. Add images, merge or "
                             "drop the class")
        gids = gids[rng.permutation(len(gids))]
        sizes = np.array([len(members[g]) for g in gids])
        assigned = np.zeros(3)
        # One group to each split first (test, val, train), so every class is in every split; then each
        # group goes where the split is furthest below its share of what has been assigned so far.
        for j, (g, size) in enumerate(zip(gids, sizes)):
            if j < 3:
                s = 2 - j
            else:
                s = int(np.argmax(fractions * (assigned.sum() + size) - assigned))
            assigned[s] += size
            out[members[g]] = SPLITS[s]
    return out


def save_split(path: Path, image_ids: np.ndarray, split: np.ndarray) -> None:
    import pandas as pd

    keep = split != ""
    write_csv(path, pd.DataFrame({"image_id": image_ids[keep], "split": split[keep]}))


def load_split(run_dir: Path, image_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Reuse the split of an earlier run. Returns (split per cache row, counts of mismatches)."""
    import pandas as pd

    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise InputError(f"--split-from {run_dir}: no split.csv there; pass a run directory made by train-head")
    check_split_file(path, "the run directory is damaged: pass another run or train this one again")
    try:
        df = csv_unescape(pd.read_csv(path, dtype=str, keep_default_na=False))  # ids as the cache holds them
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{path} is not a readable split manifest ({str(exc).strip().splitlines()[0][:120]}); the "
                         "run directory is damaged: pass another run or train this one again") from None
    if list(df.columns[:2]) != ["image_id", "split"] or not set(df["split"]) <= set(SPLITS):
        raise InputError(f"{path} is not a split manifest (expected columns image_id,split with train/val/test)")
    mapping = dict(zip(df["image_id"], df["split"]))
    split = np.array([mapping.get(i, "") for i in image_ids], dtype=object)
    cached = set(image_ids)
    missing = [i for i in df["image_id"] if i not in cached]
    if missing:
        raise InputError(f"{len(missing)} images of {path} are not in this cache (e.g. {missing[0]!r}); a reused "
                         "split must refer to the same images")
    return split, {"not_in_split": int(sum(1 for i in image_ids if i not in mapping))}


def check_split(split: np.ndarray, labels: np.ndarray, groups: np.ndarray, class_names: list[str]) -> None:
    """Every class in every split, and no group in two splits (also checked on reused splits)."""
    for s in SPLITS:
        have = set(labels[split == s])
        for c, name in enumerate(class_names):
            if (labels == c).any() and c not in have:
                raise InputError(f"class {name!r} has no images in the {s} split; it has "
                                 f"{int((labels == c).sum())} images in all")
    seen: dict[str, str] = {}
    for g, s in zip(groups, split):
        if g and s:
            if seen.setdefault(g, s) != s:
                raise InputError(f"group {g!r} has images in both the {seen[g]} and {s} splits")


# --- grouped CV folds of train+val, and the early-stopping slice of a part's training rows (used by sweeps) ----

def make_folds(data: CacheData, split: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) for each train+val row, -1 elsewhere: grouped and stratified."""
    from sklearn.model_selection import StratifiedGroupKFold

    dev = np.flatnonzero(np.isin(split, ("train", "val")))
    y = data.labels[dev]
    groups = group_keys(data.groups[dev], data.image_ids[dev])
    for c in np.unique(y):
        n_groups = len(set(groups[y == c]))
        if n_groups < k:
            raise InputError(f"--folds {k}: class {data.class_names[c]!r} has only {n_groups} groups in train+val; "
                             f"use --folds {max(2, n_groups)} or fewer")
    folds = np.full(len(split), -1)
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(skf.split(np.zeros(len(dev)), y, groups)):
        folds[dev[held]] = f
    return folds


EARLY_STOP_FRACTION = 0.15  # of a CV fold's training groups, per class stratum: its early-stopping slice


def early_stopping_slice(data: CacheData, rows: np.ndarray, seed, fraction: float = EARLY_STOP_FRACTION,
                         where: str = " of a CV fold", fix: str = "use fewer --folds, or --folds 0"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Split a part's training rows into (fit, stop): `stop` watches early stopping, `fit` trains.

    Grouped (a lesion is wholly in one of them) and stratified as `make_split` is: each group counts under the
    rarest class it holds, and `fraction` of each class's groups (at least one, when it has two or more) goes to
    `stop`; a class with a single group stays in `fit`. Deterministic: `seed` (an int or a tuple of ints, e.g.
    (split seed, fold)) and the data decide, not the row order."""
    rows = np.asarray(rows)
    labels = data.labels[rows]
    # Sorted group keys: the row order does not matter.
    uniq, inverse = np.unique(group_keys(data.groups[rows], data.image_ids[rows]), return_inverse=True)
    n_classes = len(data.class_names)
    rarest_first = np.lexsort((np.arange(n_classes), np.bincount(labels, minlength=n_classes)))
    place = np.empty(n_classes, int)
    place[rarest_first] = np.arange(n_classes)
    rarest = np.full(len(uniq), n_classes)
    np.minimum.at(rarest, inverse, place[labels])
    stratum = rarest_first[rarest]  # (groups,) the rarest class each group holds
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(uniq), bool)
    for c in np.unique(stratum):
        gids = np.flatnonzero(stratum == c)
        if len(gids) >= 2:
            chosen[rng.permutation(gids)[:max(1, int(round(fraction * len(gids))))]] = True
    if not chosen.any():
        raise InputError(f"no class has two groups among {len(rows)} training rows{where}, so no grouped "
                         f"early-stopping slice can be set aside; {fix}")
    stop = chosen[inverse]
    return rows[~stop], rows[stop]


def cv_parts(data: CacheData, split: np.ndarray, folds: np.ndarray | None, seed: int = 0
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(fit, stop, scored) rows of each part a configuration is scored on.

    No folds: val is scored; the train split minus its early-stopping slice (seeded by (seed,)) trains. K
    folds: fold f is scored; the other folds minus their slice (seeded by (seed, f)) train. Either way the scored
    rows never pick the epoch, so a configuration's score is not flattered by its own stopping point."""
    if folds is None:
        fit, stop = early_stopping_slice(data, np.flatnonzero(split == "train"), (seed,), where=" of the train split",
                                         fix="add images, or use `train-head`, which early-stops on val")
        return [(fit, stop, np.flatnonzero(split == "val"))]
    parts = []
    for f in range(folds.max() + 1):
        fit, stop = early_stopping_slice(data, np.flatnonzero((folds >= 0) & (folds != f)), (seed, f))
        parts.append((fit, stop, np.flatnonzero(folds == f)))
    return parts


# --- near-duplicates across groups: found (duplicates.py), joined into one group before splitting, recorded -------

DUPLICATES = ("group", "report", "ignore")
LISTED_PAIRS = 50  # pairs named in config.json and the report (crossing ones first); all are counted


def check_duplicates(mode: str) -> str:
    if mode not in DUPLICATES:
        raise InputError(f"--duplicates should be one of {', '.join(DUPLICATES)}; received {mode!r}")
    return mode


def find_near_duplicates(data: CacheData, mode: str) -> Pairs | None:
    """Near-duplicate pairs among the labeled rows in different groups (cache row numbers); None with `ignore`."""
    if check_duplicates(mode) == "ignore":
        return None
    rows = np.flatnonzero(data.labels >= 0)
    everything = len(rows) == len(data.labels)
    phash = getattr(data, "phash", None)
    pairs = near_duplicates(data.features if everything else take(data.features, rows),
                            None if phash is None else np.asarray(phash)[rows],
                            group_keys(data.groups[rows], data.image_ids[rows]))
    pairs.rows = rows[pairs.rows].reshape(-1, 2)
    return pairs


def join_near_duplicates(data: CacheData, pairs: Pairs | None) -> np.ndarray:
    """(N,) groups for the split: the groups (or lone images) that near-duplicate pairs connect become one group,
    named after the first of their keys (union-find), so the split keeps them on one side."""
    keys = group_keys(data.groups, data.image_ids)
    if pairs is None or not len(pairs.rows):
        return data.groups
    uniq, inverse = np.unique(keys, return_inverse=True)
    parent = np.arange(len(uniq))

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in inverse[pairs.rows].tolist():
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)  # the root is the smallest key: independent of row and pair order
    roots = np.array([root(k) for k in range(len(uniq))])
    joined = np.bincount(roots, minlength=len(uniq))[roots] > 1
    names = np.where(joined, np.char.add("near-duplicates:", uniq[roots].astype(str)), "")
    return np.where(joined[inverse], names[inverse], data.groups).astype(object)


def recorded_groups(run_dir: Path, data: CacheData) -> np.ndarray:
    """The groups a run's split was made with: its recorded joined near-duplicate groups applied to this cache's."""
    import json

    run_dir = Path(run_dir)
    record = {}
    for name, where in (("config.json", ("split", "duplicates")), ("sweep.json", ("duplicates",))):
        if (run_dir / name).is_file():
            record = json.loads((run_dir / name).read_text(encoding="utf-8"))
            for key in where:
                record = record.get(key) or {} if isinstance(record, dict) else {}
            break
    name_of = {k: f"near-duplicates:{min(group)}" for group in record.get("joined") or [] for k in group}
    keys = group_keys(data.groups, data.image_ids)
    return np.array([name_of.get(k, g) for k, g in zip(keys, data.groups)], dtype=object)


def duplicate_groups(data: CacheData, mode: str, split_from: Path | None = None) -> tuple[Pairs | None, np.ndarray]:
    """(near-duplicate pairs, (N,) groups to split by): a reused split's recorded groups; else, with `group`, the
    cache's groups joined by the pairs; else the cache's groups."""
    near = find_near_duplicates(data, mode)
    if split_from:
        return near, recorded_groups(split_from, data)
    return near, join_near_duplicates(data, near) if mode == "group" else data.groups


def duplicates_record(mode: str, pairs: Pairs | None, data: CacheData, split: np.ndarray,
                      groups: np.ndarray) -> dict:
    """config.json's split.duplicates: the choice, how each check searched, the pair counts (those that cross
    train/val/test), the joined groups (by their original keys: what --split-from reapplies) and the first pairs."""
    keys = group_keys(data.groups, data.image_ids)
    joined: dict[str, set] = {}
    for g, k in zip(groups, keys):
        if str(g).startswith("near-duplicates:"):
            joined.setdefault(g, set()).add(k)
    record = {"mode": mode, "joined": sorted(sorted(v) for v in joined.values() if len(v) > 1)}
    if pairs is None:
        return record | {"checks": {}, "pairs": 0, "crossing": 0, "by_check": {}, "listed": []}
    i, j = pairs.rows[:, 0], pairs.rows[:, 1]
    crossing = (split[i] != split[j]) & (split[i] != "") & (split[j] != "")
    kinds = pairs.kinds()
    listed = []
    for p in np.lexsort((np.arange(len(i)), ~crossing))[:LISTED_PAIRS]:
        a, b = int(i[p]), int(j[p])
        listed.append({"image_a": str(data.image_ids[a]), "group_a": str(data.groups[a]), "split_a": str(split[a]),
                       "image_b": str(data.image_ids[b]), "group_b": str(data.groups[b]), "split_b": str(split[b]),
                       "check": str(kinds[p]), "bits": int(pairs.bits[p]) if pairs.bits[p] >= 0 else None,
                       "cosine": None if np.isnan(pairs.cosine[p]) else round(float(pairs.cosine[p]), 4)})
    return record | {"checks": pairs.checks, "pairs": int(len(i)), "crossing": int(crossing.sum()),
                     "by_check": {"phash": int((pairs.bits >= 0).sum()),
                                  "cosine": int((~np.isnan(pairs.cosine)).sum())},
                     "listed": listed}


def duplicates_metrics(record: dict | None) -> dict | None:
    """metrics.json's near_duplicates: the counts of config.json's record."""
    if not record:
        return None
    return {"mode": record["mode"], "pairs": record["pairs"], "crossing_splits": record["crossing"],
            "joined_groups": len(record["joined"]), "by_check": record["by_check"],
            "searched": {k: v.get("search") for k, v in record["checks"].items()}}
