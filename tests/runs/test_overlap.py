"""The overlap checks on their own: the feature search finds what a plain cosine matrix finds (across block edges),
HAM/ISIC lesion ids are compared whatever the caches' sources, and features of another backbone configuration are
not compared."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import feature_cache

from bottleneck.cache import is_streamed, load_cache, load_cache_within
from bottleneck.runs import overlap
from bottleneck.runs.overlap import find_overlap, nearest_features


def test_nearest_features_is_the_cosine_matrix_across_blocks(monkeypatch):
    monkeypatch.setattr(overlap, "FEATURE_ROWS", 4)  # blocks of 4 x 7 rows: every edge crossed
    monkeypatch.setattr(overlap, "TRAIN_BLOCK", 7)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    x_rows, y_rows = np.arange(3, 25), np.arange(0, 50, 2)
    best, where = nearest_features(x, x_rows, y, y_rows)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    sims = unit(x[x_rows]) @ unit(y[y_rows]).T
    np.testing.assert_allclose(best, sims.max(axis=1), rtol=1e-5)
    assert (where == y_rows[sims.argmax(axis=1)]).all()


@pytest.mark.filterwarnings("ignore:features of .* streaming them")
def test_streamed_training_features_give_the_same_answer(tmp_path):
    path = feature_cache(tmp_path / "t.h5", counts={"mel": 20, "nv": 20}, dim=8)
    streamed, whole = load_cache_within(path, 1e-6), load_cache(path)  # 1e-6 GiB: read a chunk at a time
    assert is_streamed(streamed.features)
    rows = np.arange(1, 40, 3)
    got = nearest_features(whole.features, np.arange(40), streamed.features, rows)
    want = nearest_features(whole.features, np.arange(40), whole.features, rows)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert (got[1] == want[1]).all() and set(got[1]) <= set(rows)


def caches(tmp_path):
    counts = {"mel": 6, "nv": 6}
    train = load_cache(feature_cache(tmp_path / "a.h5", counts=counts, dim=8, source="ham10000"))
    other = load_cache(feature_cache(tmp_path / "b.h5", counts=counts, dim=8, seed=1, source="csv"))
    other = replace(other, image_ids=np.array([f"b{k}" for k in range(12)], dtype=object),
                    sha256=np.array([f"b{k:063x}" for k in range(12)], dtype=object))
    return train, np.array(["train"] * 12, dtype=object), other, np.arange(12)


def test_ham_and_isic_lesion_ids_are_compared_whatever_the_sources(tmp_path):
    train, split, other, rows = caches(tmp_path)
    o, _ = find_overlap(train, split, other, rows)
    assert not o.lesion_ids and "sources ham10000 and csv" in o.skipped["same_lesion"]  # L0-1 ... mean nothing
    train = replace(train, groups=np.array([f"HAM_{k // 2:07d}" for k in range(12)], dtype=object))
    other = replace(other, groups=np.array(["HAM_0000001", "IL_0000001", "HAM_0000005", "L0-1"] + [""] * 8,
                                           dtype=object))
    o, found = find_overlap(train, split, other, rows)
    assert o.lesion_ids == "HAM/ISIC ids" and o.counts["same_lesion"] == 2 and "same_lesion" not in o.skipped
    assert [(f["image_id"], f["lesion_id"], f["matches"]) for f in found] == [
        ("b0", "HAM_0000001", "img00002"), ("b2", "HAM_0000005", "img00010")]


def test_features_of_another_backbone_configuration_are_not_compared(tmp_path):
    train, split, _, rows = caches(tmp_path)
    other = replace(train, image_ids=np.array([f"c{k}" for k in range(12)], dtype=object),
                    sha256=np.array([f"c{k:063x}" for k in range(12)], dtype=object), groups=np.array([""] * 12))
    o, _ = find_overlap(train, split, other, rows)
    assert o.counts["similar_features"] == 12  # the same features
    o, found = find_overlap(train, split, replace(other, config=replace(other.config, backbone="resnet50")), rows)
    assert o.found == 0 and not found
    why = o.skipped["similar_features"]
    assert "other backbone configurations (backbone resnet50 (a.h5) vs vgg16 (training))" in why
