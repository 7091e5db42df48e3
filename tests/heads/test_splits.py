import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.heads.splits import (
    SplitSpec,
    check_split,
    cv_parts,
    early_stopping_slice,
    load_split,
    make_folds,
    make_split,
    save_split,
)


def ham_like(n_lesions=300, seed=0):
    """Lesions with 1-3 images each, one label per lesion, imbalanced like HAM10000."""
    rng = np.random.default_rng(seed)
    labels, groups, ids = [], [], []
    for les in range(n_lesions):
        c = rng.choice(3, p=[0.67, 0.2, 0.13])
        for _ in range(rng.integers(1, 4)):
            labels.append(c)
            groups.append(f"HAM_{les}")
            ids.append(f"ISIC_{len(ids)}")
    return np.array(labels), np.array(groups, dtype=object), np.array(ids, dtype=object)


def test_groups_never_cross_splits_and_classes_are_stratified():
    y, g, ids = ham_like()
    split = make_split(y, g, ids, ["nv", "mel", "bkl"], SplitSpec(seed=1))
    for group in set(g):
        assert len(set(split[g == group])) == 1
    for c in range(3):
        share = np.array([((split == s) & (y == c)).sum() for s in ("train", "val", "test")]) / (y == c).sum()
        np.testing.assert_allclose(share, [0.7, 0.15, 0.15], atol=0.06)
    check_split(split, y, g, ["nv", "mel", "bkl"])


def test_split_is_deterministic_from_the_seed_and_independent_of_row_order():
    y, g, ids = ham_like()
    a = make_split(y, g, ids, ["a", "b", "c"], SplitSpec(seed=3))
    b = make_split(y, g, ids, ["a", "b", "c"], SplitSpec(seed=3))
    c = make_split(y, g, ids, ["a", "b", "c"], SplitSpec(seed=4))
    assert list(a) == list(b) and list(a) != list(c)
    perm = np.random.default_rng(0).permutation(len(y))
    shuffled = make_split(y[perm], g[perm], ids[perm], ["a", "b", "c"], SplitSpec(seed=3))
    assert list(shuffled) == list(a[perm])


def test_rows_without_groups_are_their_own_groups_and_unlabeled_rows_are_left_out():
    y = np.array([0] * 10 + [1] * 10 + [-1] * 3)
    g = np.array([""] * 23, dtype=object)
    ids = np.array([f"i{k}" for k in range(23)], dtype=object)
    split = make_split(y, g, ids, ["a", "b"])
    assert set(split[:20]) == {"train", "val", "test"} and set(split[20:]) == {""}


def test_a_class_too_small_to_split_is_named():
    y = np.array([0] * 20 + [1] * 4)
    g = np.array([f"L{k}" for k in range(20)] + ["X", "X", "Y", "Y"], dtype=object)
    ids = np.array([f"i{k}" for k in range(24)], dtype=object)
    with pytest.raises(InputError, match="class 'rare' has only 2 groups \\(4 images\\)"):
        make_split(y, g, ids, ["common", "rare"])


def test_one_class_and_no_labels_are_refused():
    ids = np.array(["a", "b", "c"], dtype=object)
    g = np.array(["", "", ""], dtype=object)
    with pytest.raises(InputError, match=r"single class \('only'\)"):
        make_split(np.array([0, 0, 0]), g, ids, ["only"])
    with pytest.raises(InputError, match="no labeled images"):
        make_split(np.array([-1, -1, -1]), g, ids, [])


def test_bad_fractions_are_refused():
    with pytest.raises(InputError, match="sum to 1"):
        SplitSpec(0.8, 0.15, 0.15).fractions()


def test_saved_split_round_trips_and_must_match_the_cache(tmp_path):
    y, g, ids = ham_like(60)
    split = make_split(y, g, ids, ["a", "b", "c"])
    save_split(tmp_path / "split.csv", ids, split)
    again, info = load_split(tmp_path, ids)
    assert list(again) == list(split) and info["not_in_split"] == 0
    with pytest.raises(InputError, match="not in this cache"):
        load_split(tmp_path, ids[:-5])
    with pytest.raises(InputError, match="no split.csv"):
        load_split(tmp_path / "nowhere", ids)


def test_saved_split_gives_back_ids_a_spreadsheet_would_run(tmp_path):
    """split.csv escapes ids starting with =, +, -, @ (and ') with a `'`; load_split takes it off exactly."""
    ids = np.array(["=HYPERLINK(1)", "-abc", "+1", "@x", "'q", "''r", "'=s", "ok", "\tt"], dtype=object)
    split = np.array(["train", "val", "test"] * 3, dtype=object)
    save_split(tmp_path / "split.csv", ids, split)
    assert "'=HYPERLINK(1)" in (tmp_path / "split.csv").read_text()
    again, info = load_split(tmp_path, ids)
    assert list(again) == list(split) and info["not_in_split"] == 0


def test_check_split_catches_a_group_in_two_splits():
    y = np.array([0, 0, 1, 1, 0, 1])
    g = np.array(["A", "A", "B", "C", "D", "E"], dtype=object)
    split = np.array(["train", "test", "train", "val", "val", "test"], dtype=object)
    with pytest.raises(InputError, match="group 'A' has images in both"):
        check_split(split, y, g, ["x", "y"])


# --- grouped CV folds and early-stopping slices ------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path):
    return feature_cache(tmp_path / "feat.h5", images_per_group=3)


def test_cv_folds_keep_groups_together_and_leave_test_out(cache):
    data = load_cache(cache)
    split = make_split(data.labels, data.groups, data.image_ids, data.class_names)
    folds = make_folds(data, split, 3, seed=0)
    assert set(folds[split == "test"]) == {-1}
    assert set(folds[split != "test"]) == {0, 1, 2}
    df = pd.DataFrame({"g": data.groups, "f": folds})
    assert (df.groupby("g")["f"].nunique() == 1).all()
    with pytest.raises(InputError, match="--folds 50: class 'bcc' has only"):
        make_folds(data, split, 50, seed=0)


def test_each_fold_early_stops_on_a_grouped_slice_of_its_training_folds(cache):
    data = load_cache(cache)
    split = make_split(data.labels, data.groups, data.image_ids, data.class_names)
    folds = make_folds(data, split, 3, seed=0)
    parts = cv_parts(data, split, folds, seed=0)
    assert len(parts) == 3
    for f, (fit, stop, held) in enumerate(parts):
        assert set(held) == set(np.flatnonzero(folds == f))
        assert set(fit) | set(stop) == set(np.flatnonzero((folds >= 0) & (folds != f)))
        assert not set(fit) & set(stop) and not set(stop) & set(held)  # the scored fold never stops training
        assert not set(data.groups[fit]) & set(data.groups[stop])  # grouped: no lesion on both sides
        assert set(data.labels[stop]) == {0, 1, 2}  # stratified: every class watches early stopping
        n_groups = len(set(data.groups[stop])) / len(set(data.groups[np.r_[fit, stop]]))
        assert 0.1 < n_groups < 0.25  # about 15% of the training folds' groups
    again = cv_parts(data, split, folds, seed=0)
    other = cv_parts(data, split, folds, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(parts, again))  # deterministic from the seed
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(parts, other))
    shuffled = np.random.default_rng(0).permutation(np.r_[parts[0][0], parts[0][1]])
    assert set(early_stopping_slice(data, shuffled, (0, 0))[1]) == set(parts[0][1])  # not the row order
    # Without folds: val is scored; a grouped slice of the train split (not val) picks the epoch.
    (fit, stop, held), = cv_parts(data, split, None)
    assert set(split[fit]) == set(split[stop]) == {"train"} and set(split[held]) == {"val"}
    assert not set(fit) & set(stop) and not set(data.groups[fit]) & set(data.groups[stop])


def test_near_duplicates_join_their_groups_before_the_split_and_a_reused_split_keeps_them(tmp_path):
    """Rows 0 (lesion L0-0), 10 (L0-5) and 21 (L0-10) are one picture (chained hashes): their three lesions become
    one group, transitively, named independently of row order, and the split keeps all six images together."""
    import json

    from bottleneck.heads.splits import duplicate_groups, duplicates_record

    same = {0: 0b1011 << 9, 10: 0b1011 << 9, 21: (0b1011 << 9) ^ (1 << 40)}
    cache = feature_cache(tmp_path / "c.h5", counts={"a": 40, "b": 40},
                          phash=lambda k, name, i: same.get(k, (k * 0x9E3779B97F4A7C15 % 2 ** 63) << 1))
    data = load_cache(cache)
    near, groups = duplicate_groups(data, "group")
    assert sorted(map(tuple, near.rows.tolist())) == [(0, 10), (0, 21), (10, 21)]
    joined = {g for g in groups if g.startswith("near-duplicates:")}
    assert joined == {"near-duplicates:g:L0-0"}
    members = np.flatnonzero(groups == "near-duplicates:g:L0-0")
    assert set(data.groups[members]) == {"L0-0", "L0-5", "L0-10"} and len(members) == 6
    split = make_split(data.labels, groups, data.image_ids, data.class_names, SplitSpec(seed=2))
    assert len(set(split[members])) == 1
    record = duplicates_record("group", near, data, split, groups)
    assert record["joined"] == [["g:L0-0", "g:L0-10", "g:L0-5"]] and record["crossing"] == 0 and record["pairs"] == 3
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"split": {"duplicates": record}}))
    _, again = duplicate_groups(data, "ignore", tmp_path / "run")  # --split-from: the recorded groups
    assert list(again) == list(groups)
    _, plain = duplicate_groups(data, "report")
    assert list(plain) == list(data.groups)
