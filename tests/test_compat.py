"""Formats stay compatible: a cache and a head run written by bottleneck 0.1.0 (tests/data/legacy-0.1.0, made by
its make.py before the layout step) are read, extended, evaluated and served by this version, and what this
version writes has the same layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import write_image

from bottleneck.cache.row_keys import keys_for
from bottleneck.cache.store import describe_cache, load_cache, read_views
from bottleneck.extract.run import ExtractOptions, extract
from bottleneck.heads.model import HeadConfig, predict_proba
from bottleneck.heads.splits import SplitSpec
from bottleneck.images.index import build_index
from bottleneck.models.serve import HEAD_RUN_ATOL, predict
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.runs.directory import load_run
from bottleneck.runs.evaluate import evaluate_run

LEGACY = Path(__file__).parent / "data" / "legacy-0.1.0"
OPTS = dict(backbone="vgg16", weights="none", image_size=32, views=1, progress=False)  # as make.py extracted
# Values that differ between any two writes, not between versions.
VOLATILE_ATTRS = {"created", "updated", "library_versions", "root"}


@pytest.fixture
def legacy(tmp_path):
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def layout(path: Path) -> dict:
    """Every dataset's shape, dtype and chunking, and the attribute names of an HDF5 cache."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, (obj.shape, str(obj.dtype), obj.chunks))
                     if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = sorted(f.attrs)
    return out


def test_a_legacy_cache_is_read_and_extended_in_place(legacy):
    cache = legacy / "cache.h5"
    data = load_cache(cache)
    assert len(data.labels) == 18 and data.class_names == ["bcc", "mel", "nv"] and data.n_views == 1
    assert data.config.backbone == "vgg16" and data.config.input_size == 32 and data.views_ok.all()
    assert data.meta == {}  # no metadata columns before they existed
    assert describe_cache(cache)["class_counts"] == {"bcc": 6, "mel": 6, "nv": 6}
    before, views_before = data.features.copy(), read_views(cache)

    again = extract(build_index(legacy / "images"), ExtractOptions(**OPTS, cache=cache))
    assert (again.extracted, again.already_cached, again.rows) == (0, 18, 18)  # same config: nothing recomputed

    write_image(legacy / "images" / "mel" / "new.jpg", seed=77)
    more = extract(build_index(legacy / "images"), ExtractOptions(**OPTS, cache=cache))
    assert (more.extracted, more.rows) == (1, 19)
    grown = load_cache(cache)
    np.testing.assert_array_equal(grown.features[:18], before)  # old rows untouched, appended after
    with h5py.File(cache, "r") as f:  # the commit gave the legacy cache its row keys, for all 19 rows
        np.testing.assert_array_equal(f["row_keys"][:], keys_for(grown.image_ids, grown.sha256))
    np.testing.assert_array_equal(read_views(cache)[:18], views_before)
    assert grown.image_ids[18] == "mel/new.jpg" and grown.class_names[grown.labels[18]] == "mel"


def test_this_version_writes_the_legacy_layout_and_the_same_features(legacy, tmp_path):
    fresh = tmp_path / "fresh.h5"
    extract(build_index(legacy / "images"), ExtractOptions(**OPTS, cache=fresh))
    old, new = layout(legacy / "cache.h5"), layout(fresh)
    assert set(new.pop("attrs")) - set(old.pop("attrs")) == {"precision", "xla", "shard", "index_fingerprint",
                                                              "index_images", "meta_columns",
                                                              "identity"}  # added since 0.1.0
    assert new.pop("row_keys") == ((18, 2), "uint64", (8192, 2))  # added: lookups by key
    assert new.pop("phash")[:2] == ((18,), "uint64")  # added: each image's perceptual fingerprint
    assert new == old
    assert load_cache(legacy / "cache.h5").config.precision == "float32"  # what 0.1.0 computed in
    with h5py.File(legacy / "cache.h5", "r") as a, h5py.File(fresh, "r") as b:
        for key in set(a.attrs) - VOLATILE_ATTRS - {"dataset"}:
            assert str(a.attrs[key]) == str(b.attrs[key]), key
        # a generic folder name (`images`) now names the dataset by its parent, as the default cache name does
        assert (a.attrs["dataset"], b.attrs["dataset"]) == ("images", "legacy")
    old_data, new_data = load_cache(legacy / "cache.h5"), load_cache(fresh)
    order = np.argsort(new_data.image_ids)
    assert list(new_data.image_ids[order]) == list(np.sort(old_data.image_ids))
    # Same pixels, same backbone (seeded): the same features, up to a CPU's float rounding.
    np.testing.assert_allclose(new_data.features[order], old_data.features[np.argsort(old_data.image_ids)],
                               rtol=1e-2, atol=1e-3)


def test_a_legacy_run_loads_evaluates_and_predicts(legacy):
    config, head = load_run(legacy / "run")
    data = load_cache(legacy / "cache.h5")
    saved = pd.read_csv(legacy / "run" / "predictions.csv").set_index("image_id")
    rows = np.array([list(data.image_ids).index(i) for i in saved.index])
    cols = [f"p_{n}" for n in config["cache"]["class_names"]]
    np.testing.assert_allclose(predict_proba(head, data.features[rows]), saved[cols].to_numpy(), atol=1e-5)

    # The recorded cache path is where make.py wrote it; here the copy is passed, as an external cache. Where
    # make.py's cache still exists, the copy's training and validation rows are recognised (same bytes), left out.
    r = evaluate_run(legacy / "run", cache=legacy / "cache.h5")
    assert r.metrics["n"] + r.overlap.excluded == 18 and set(r.metrics["per_class"]) == {"bcc", "mel", "nv"}
    assert r.overlap.excluded in (0, 15)  # 15: the run's 9 training + 6 validation images

    out = legacy / "predicted.csv"
    p = predict(legacy / "run", [legacy / "images"], out=out)  # backbone rebuilt from the run's provenance
    got = pd.read_csv(out)
    got.index = [Path(x).relative_to(legacy / "images").as_posix() for x in got["path"]]
    assert not p.failed and len(got) == 18
    np.testing.assert_allclose(got.loc[saved.index, cols].to_numpy(), saved[cols].to_numpy(), atol=HEAD_RUN_ATOL)


@pytest.mark.slow
def test_a_new_run_has_the_legacy_files_and_config_keys(legacy, tmp_path):
    r = train_head_run(legacy / "cache.h5", HeadConfig(hidden=(16,), epochs=3, seed=0),
                       RunOptions(out=tmp_path / "run", split=SplitSpec(0.5, 0.25, 0.25, 0), progress=False))
    old = {p.name for p in (legacy / "run").iterdir()} | {"curves.png", "confusion.png"}  # plots not kept there
    old |= {"calibration.png", "roc.png"}  # added since: the reliability diagram and the ROC curves
    assert {p.name for p in r.run_dir.iterdir()} == old
    old_config = json.loads((legacy / "run" / "config.json").read_text())
    new_config = json.loads((r.run_dir / "config.json").read_text())
    # added since: how features were read (memory_gb), the head's classes with the --class-map behind them, and
    # the calibration, decision rule and operating point that evaluate, predict and export apply
    assert set(new_config) - {"features", "class_names", "class_map", "calibration", "operating_point",
                              "decision_rule"} == \
        set(old_config)
    assert new_config["class_names"] == old_config["cache"]["class_names"] and new_config["class_map"] is None
    assert set(new_config["cache"]) == set(old_config["cache"])
    assert new_config["head"] == old_config["head"]
    assert pd.read_csv(r.run_dir / "split.csv").equals(pd.read_csv(legacy / "run" / "split.csv"))
    old_metrics = json.loads((legacy / "run" / "metrics.json").read_text())
    clinical = {"calibration", "bootstrap", "positive", "operating_point", "lesion_level", "subgroups",
                "small_numbers", "warnings",  # added since (issue: results a clinician can defend)
                "data_checks", "decision_rule",  # grouping unit, reference standard and ages, for the limitations
                "near_duplicates"}  # near-duplicate pairs across groups, found before the split
    assert set(json.loads((r.run_dir / "metrics.json").read_text())) - clinical == set(old_metrics) - {"warnings"}
