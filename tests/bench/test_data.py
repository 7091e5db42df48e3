"""The synthetic data the bench times: the features cache written through the real CacheWriter and read back with
h5py and load_cache, the HAM-sized JPEGs, the rows that grow large caches, and the --grow-rows sizes."""

import h5py
import numpy as np
import pytest
from PIL import Image

from bottleneck.bench.data import (
    BenchOptions,
    parse_sizes,
    synthetic_features,
    synthetic_rows,
    write_bench_images,
    write_synthetic_cache,
)
from bottleneck.cache import load_cache
from bottleneck.errors import InputError


def test_synthetic_cache_holds_the_synthetic_features_across_write_batches(tmp_path):
    opts = BenchOptions(rows=5000, dim=8, classes=7, seed=3)  # 5000 rows: two write batches of up to 4096
    cache = write_synthetic_cache(tmp_path / "bench.h5", opts)
    x, y, groups = synthetic_features(opts.rows, opts.dim, opts.classes, opts.seed)
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["n_rows"]) == 5000
        np.testing.assert_array_equal(f["features"][:5000], x)  # (5000, 8) float16, row order kept
    data = load_cache(cache)
    assert data.class_names == [f"class{c}" for c in range(7)] and data.config.backbone == "synthetic"
    np.testing.assert_array_equal(data.labels, y)
    assert list(data.groups) == list(groups) and data.image_ids[4999] == "b4999"
    counts = np.bincount(y, minlength=7)
    assert counts.argmax() == 0 and 0.6 < counts[0] / 5000 < 0.74  # HAM10000-like: 67% one class
    assert len(set(groups)) < 5000  # several images per lesion


def test_bench_images_are_ham_sized_jpegs_in_two_class_folders(tmp_path):
    folder = write_bench_images(tmp_path / "img", 3, seed=1)
    write_bench_images(folder, 2, seed=1, start=3)  # the rerun part's "1% new" images: new names, none rewritten
    files = sorted(folder.rglob("*.jpg"))
    assert [f.name for f in files] == ["img000001.jpg", "img000003.jpg", "img000000.jpg", "img000002.jpg",
                                       "img000004.jpg"]
    assert {f.parent.name for f in files} == {"mel", "nv"}
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (600, 450)


def test_synthetic_rows_are_distinct_and_continue_where_they_left_off():
    rows, feats = synthetic_rows(10, 5, 4)
    assert [r["image_id"] for r in rows] == [f"g{i:08d}" for i in range(10, 15)]
    assert len({r["sha256"] for r in rows}) == 5 and rows[0]["label"] == "c3"
    assert feats.shape == (5, 4) and len(np.unique(feats[:, 0])) == 5
    assert synthetic_rows(0, 15, 4)[0][10] == rows[0]


def test_grow_rows_sizes_are_parsed_or_refused():
    assert parse_sizes("100000,1000000") == (100_000, 1_000_000) and parse_sizes("7") == (7,)
    for bad in ("100k", "0,10", ""):
        with pytest.raises(InputError, match="--grow-rows should be comma-separated positive row counts"):
            parse_sizes(bad)
