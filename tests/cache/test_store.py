"""Reading a cache: load_cache, read_views, decode_strings and describe_cache (what `info` prints), on real HDF5
files written by the library's writer or by h5py; what is not a readable cache is refused with the reason."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import TINY_ARGS, feature_cache, make_ham, run_cli

from bottleneck.cache.store import (
    CacheConfig,
    check_readable,
    decode_strings,
    describe_cache,
    load_cache,
    pending_batches,
    read_views,
)
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import CacheError


def test_extract_then_info_on_a_ham10000_folder(tmp_path):
    root = make_ham(tmp_path / "HAM10000")
    cache = tmp_path / "ham.h5"
    r = run_cli("extract", root, *TINY_ARGS, "--cache", cache)
    assert r.exit_code == 0, r.output
    c = load_cache(cache)
    assert c.features.shape == (12, 512) and c.attrs["source"] == "ham10000"
    r = run_cli("info", cache)
    assert r.exit_code == 0, r.output
    assert "rows: 12 (6 groups)" in r.output
    for name in c.class_names:
        assert f"  {name}: 4" in r.output


CONFIG = CacheConfig(backbone="vgg16", weights="none", weights_sha256="", seed=0, input_size=32, pooling="avg",
                     preprocessing="caffe", dtype="float16", num_features=4)


def rows_of(ids, labels, groups):
    return [dict(image_id=i, path=f"x/{i}.jpg", label=lab, group=g, sha256=f"{k:064x}", width=40, height=30)
            for k, (i, lab, g) in enumerate(zip(ids, labels, groups))]


def test_refuses_a_missing_file_a_foreign_hdf5_and_a_newer_schema(tmp_path):
    with pytest.raises(CacheError, match="does not exist; create it with `bottleneck extract"):
        load_cache(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["features"] = np.zeros((2, 4))
    with pytest.raises(CacheError, match="is not a bottleneck cache"):
        check_readable(foreign)
    newer = feature_cache(tmp_path / "newer.h5", counts={"a": 2, "b": 2}, dim=4)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match="schema version 99, newer than"):
        load_cache(newer)
    text = tmp_path / "text.h5"
    text.write_text("not HDF5")
    with pytest.raises(CacheError, match="cannot open cache"):
        load_cache(text)


def test_load_cache_rows_with_and_without_features(tmp_path):
    path = feature_cache(tmp_path / "c.h5", counts={"bcc": 3, "mel": 2}, dim=6)
    full, rows = load_cache(path), load_cache(path, features=False)
    assert full.features.shape == (5, 6) and full.features.dtype == np.float32
    assert rows.features.shape == (0, 6)
    for name in ("labels", "image_ids", "paths", "groups", "sha256", "sizes"):
        np.testing.assert_array_equal(getattr(rows, name), getattr(full, name))
    assert full.class_names == ["bcc", "mel"] and list(full.labels) == [0, 0, 0, 1, 1]
    assert all(isinstance(v, str) for v in full.image_ids) and full.sizes.tolist()[0] == [40, 30]
    assert full.config.num_features == 6 and full.n_views == 0 and not full.views_ok.any()


def test_read_views_returns_the_asked_rows_in_the_asked_order(tmp_path):
    path = feature_cache(tmp_path / "c.h5", counts={"a": 3, "b": 2}, dim=4)
    with pytest.raises(CacheError, match="holds no augmented views"):
        read_views(path)
    stored = np.arange(5 * 2 * 4, dtype=np.float16).reshape(5, 2, 4)  # row r, view v: distinct values
    with h5py.File(path, "r+") as f:
        f["views"] = stored
    np.testing.assert_array_equal(read_views(path), stored)
    np.testing.assert_array_equal(read_views(path, np.array([3, 0, 4])), stored[[3, 0, 4]])
    assert read_views(path, np.array([], dtype=int)).shape == (0, 2, 4)


def test_decode_strings_takes_bytes_and_str():
    out = decode_strings([b"caf\xc3\xa9", "nevus benign", b""])
    assert out.dtype == object and list(out) == ["caf\u00e9", "nevus benign", ""]


def test_describe_counts_classes_unlabeled_groups_and_pending_batches(tmp_path):
    path = tmp_path / "d.h5"
    writer = CacheWriter(path, CONFIG, {"dataset": "test"}, ("mel", "nv"))
    writer.write_batch(rows_of(["a", "b", "c", "d"], ["mel", "nv", "nv", None], ["L1", "L1", "L2", ""]),
                       np.ones((4, 4)), failed=[("x/bad.jpg", "empty file", "")])
    assert pending_batches(path) and not path.exists()
    with pytest.raises(CacheError, match="only journaled batches from an interrupted first run"):
        describe_cache(path)
    with CacheWriter(path, CONFIG, {"dataset": "test"}, ("mel", "nv")):
        pass  # entering applies the journal of the "interrupted" writer
    d = describe_cache(path)
    assert (d["rows"], d["groups"], d["unlabeled"], d["pending_batches"]) == (4, 2, 1, 0)
    assert d["class_counts"] == {"mel": 1, "nv": 2} and d["failed"] == [("x/bad.jpg", "empty file")]
    assert d["config"]["backbone"] == "vgg16" and d["attrs"]["dataset"] == "test" and d["views"] == 0
    CacheWriter(path, CONFIG).write_batch(rows_of(["e"], ["mel"], [""]), np.ones((1, 4)))
    assert describe_cache(path)["pending_batches"] == 1 and describe_cache(path)["rows"] == 4
