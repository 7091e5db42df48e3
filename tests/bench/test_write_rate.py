"""The `writer` part: one CacheWriter against plain h5py, on real files in a temporary folder under the one given."""

from pathlib import Path

import pytest

from bottleneck.bench import BenchOptions
from bottleneck.bench.write_rate import bench_writer, file_system, format_writer


def test_the_writer_and_h5py_write_the_same_rows_and_their_ratio_comes_from_the_times(tmp_path):
    r = bench_writer(BenchOptions(writer_rows=500, dim=64, repeats=2), folder=tmp_path)
    assert (r["rows"], r["dim"], r["batch"], r["repeats"]) == (500, 64, 32, 2)
    assert r["writer_rows_per_s"] == pytest.approx(500 / r["writer_s"]) and r["writer_rows_per_s"] > 0
    assert r["h5py_rows_per_s"] == pytest.approx(500 / r["h5py_s"]) and r["h5py_rows_per_s"] > 0
    assert r["slowdown"] == pytest.approx(r["writer_s"] / r["h5py_s"])
    assert r["h5py_synced_rows_per_s"] <= r["h5py_rows_per_s"] and len(r["writer_runs_rows_per_s"]) == 2
    assert sorted(r["writer_runs_rows_per_s"])[0] <= r["writer_rows_per_s"] <= max(r["writer_runs_rows_per_s"])
    assert list(tmp_path.iterdir()) == []  # the temporary folder and its files are gone
    runs = r["slowdown_rows_runs"]  # each timed writer against the plain h5py rows written right after it
    assert len(runs) == 2 and r["slowdown_rows"] == pytest.approx((runs[0] + runs[1]) / 2) and min(runs) > 0
    assert r["h5py_rows_rows_per_s"] == pytest.approx(500 / r["h5py_rows_s"])
    line, rows_line = format_writer(r)
    assert line.startswith("writer: one CacheWriter, 500 rows x 64 float16 in batches of 32: ")
    assert f"{r['slowdown']:.2f}x h5py's time" in line
    assert f"the writer takes {r['slowdown_rows']:.2f}x its time" in rows_line
    assert f"{runs[0]:.2f} / {runs[1]:.2f})" in rows_line


def test_the_plain_h5py_rows_hold_what_the_writer_stores(tmp_path):
    import h5py
    import numpy as np

    from bottleneck.bench.data import synthetic_rows
    from bottleneck.bench.write_rate import _write_cache, _write_h5py
    from bottleneck.cache import ROW_FIELDS, load_cache

    rows, feats = synthetic_rows(0, 40, 8)
    x = np.asarray(feats, np.float16)
    written, synced = _write_h5py(tmp_path / "plain.h5", x, rows)
    assert written > 0 and synced >= 0
    _write_cache(tmp_path / "cache.h5", rows, x, 16)
    cache = load_cache(tmp_path / "cache.h5")
    with h5py.File(tmp_path / "cache.h5", "r") as c, h5py.File(tmp_path / "plain.h5", "r") as f:
        for name in ROW_FIELDS:  # the same UTF-8 strings, column by column
            assert h5py.check_string_dtype(f[name].dtype).encoding == "utf-8"
            assert h5py.check_string_dtype(c[name].dtype).encoding == "utf-8"
            assert f[name][:].tolist() == c[name][:].tolist() == [r[name].encode() for r in rows]
        assert np.array_equal(f["features"][:], cache.features)
        assert f["orig_size"].shape == (40, 2) and f["label"][:].tolist() == [i % 7 for i in range(40)]


def test_the_file_system_of_a_folder_is_its_mount():
    root = file_system(Path("/"))
    assert root and len(root.split()) == 2  # "TYPE DEVICE"
    assert file_system(Path("/proc/self")).startswith("proc ")


def test_a_folder_that_cannot_be_written_is_named_with_the_fix(tmp_path):
    from bottleneck.errors import InputError

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.raises(InputError, match="cannot be written .*run bench from a folder you can write to"):
        bench_writer(BenchOptions(writer_rows=64, dim=8, repeats=1), folder=not_a_folder)
    assert not_a_folder.read_text() == "a file where the cache folder should be"
