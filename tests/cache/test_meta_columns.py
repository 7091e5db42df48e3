"""Metadata columns (`extract --meta-columns`): the CSV's other columns (age, sex, body site, site...) stored per row
in the cache's `meta/` group, carried through the journal, reruns, merges and readers; real image files, real
backbone (weights=None), real HDF5, the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from conftest import TINY_ARGS, file_digest, run_cli, write_image

from bottleneck.cache.features import load_cache_within
from bottleneck.cache.journal import Journal, journal_dir, pending_batches
from bottleneck.cache.store import CacheConfig, check_readable, describe_cache, load_cache, read_attrs
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import BottleneckWarning, CacheError

# A clinic's export: id, label and group columns, and metadata with a missing value, spaces to strip, a comma.
HEADER = "image,diagnosis,patient,age,sex,site,note"
NOTE = '"seen twice, once by PK"'
# (site is not a function of the diagnosis: a column that is would be left out of the metadata by default)
ROWS = [f"img{k},{('mel', 'nv', 'bcc')[k % 3]},P{k // 2}, {20 + 5 * k} ,{('female', 'male')[k % 2]},"
        f"{('back', 'face', 'trunk')[k % 4 % 3]},{'' if k % 4 else NOTE}" for k in range(8)]
COLUMNS = ("age", "sex", "site", "note")
CSV_ARGS = ("--id-column", "image", "--label-column", "diagnosis", "--group-column", "patient")


def expected(k: int) -> dict[str, str]:
    """The stored (stripped) metadata of image k."""
    return {"age": str(20 + 5 * k), "sex": ("female", "male")[k % 2], "site": ("back", "face", "trunk")[k % 4 % 3],
            "note": "" if k % 4 else "seen twice, once by PK"}


def make_clinic(root, rows=ROWS):
    """images/img{k}.jpg|png and clinic.csv; returns the CSV."""
    for k in range(len(rows)):
        write_image(root / "images" / f"img{k}{'.jpg' if k % 2 == 0 else '.png'}", seed=200 + k)
    csv = root / "clinic.csv"
    csv.write_text("\n".join([HEADER, *rows]) + "\n")
    return csv


def extract_cli(root, csv, cache, *args):
    return run_cli("extract", root / "images", "--metadata", csv, *CSV_ARGS, *TINY_ARGS, "--cache", cache, *args)


@contextlib.contextmanager
def edited(csv, old: str, new: str):
    """The cache's own CSV corrected in place (another CSV file would be another dataset: refused without
    --append), and restored for the module's other tests."""
    text = csv.read_text()
    csv.write_text(text.replace(old, new))
    try:
        yield
    finally:
        csv.write_text(text)


def by_id(data, column):
    return dict(zip(data.image_ids, data.meta[column]))


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    """The clinic's images and CSV, extracted once with the default (every metadata column) for the module."""
    tmp = tmp_path_factory.mktemp("clinic")
    csv = make_clinic(tmp)
    r = extract_cli(tmp, csv, tmp / "all.h5")
    assert r.exit_code == 0, r.output
    return {"root": tmp, "csv": csv, "cache": tmp / "all.h5"}


@pytest.fixture
def cache(clinic, tmp_path):
    """The module's cache, copied for a test that changes it."""
    return shutil.copy(clinic["cache"], tmp_path / "c.h5")


def test_default_stores_every_other_column_in_row_order(clinic):
    with h5py.File(clinic["cache"]) as f:
        assert json.loads(f.attrs["meta_columns"]) == list(COLUMNS)  # not image, diagnosis nor patient
        assert sorted(f["meta"]) == sorted(COLUMNS)
        for c in COLUMNS:
            ds = f[f"meta/{c}"]
            assert ds.shape == (8,) and ds.maxshape == (None,)  # resizable like every per-row dataset
            assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
        ids = [v.decode() for v in f["image_id"][:]]
        ages = [v.decode() for v in f["meta/age"][:]]
    assert ages == [expected(int(i[3:]))["age"] for i in ids]  # the row order of the features
    data = load_cache(clinic["cache"])
    for c in COLUMNS:
        assert by_id(data, c) == {f"img{k}": expected(k)[c] for k in range(8)}
    assert list(data.meta) == list(COLUMNS)
    with pytest.warns(BottleneckWarning, match="streaming"):  # the budgeted reader carries them too
        streamed = load_cache_within(clinic["cache"], memory_gb=1e-9)
    assert {c: list(v) for c, v in streamed.meta.items()} == {c: list(v) for c, v in data.meta.items()}


def test_meta_columns_subset_and_none(clinic, tmp_path):
    root, csv = clinic["root"], clinic["csv"]
    r = extract_cli(root, csv, tmp_path / "some.h5", "--meta-columns", "sex, site")
    assert r.exit_code == 0, r.output
    data = load_cache(tmp_path / "some.h5")
    assert list(data.meta) == ["sex", "site"] and by_id(data, "site")["img5"] == "face"
    r = extract_cli(root, csv, tmp_path / "none.h5", "--meta-columns", "none")
    assert r.exit_code == 0, r.output
    assert load_cache(tmp_path / "none.h5").meta == {}
    with h5py.File(tmp_path / "none.h5") as f:
        assert json.loads(f.attrs["meta_columns"]) == [] and len(f["meta"]) == 0


def test_unknown_column_is_refused_and_the_cache_untouched(clinic, cache):
    before = file_digest(cache)
    r = extract_cli(clinic["root"], clinic["csv"], cache, "--meta-columns", "sex,ethnicity")
    assert r.exit_code == 1
    message = r.output.strip()
    assert message.count("\n") == 0 and "'ethnicity'" in message
    assert "image, diagnosis, patient, age, sex, site, note" in message  # the CSV's columns, to choose from
    assert file_digest(cache) == before and not pending_batches(cache)


def test_class_folders_have_no_metadata_and_refuse_named_columns(tmp_path, class_tree):
    r = run_cli("extract", class_tree, *TINY_ARGS, "--cache", tmp_path / "f.h5")
    assert r.exit_code == 0, r.output
    assert load_cache(tmp_path / "f.h5").meta == {}
    r = run_cli("extract", class_tree, *TINY_ARGS, "--cache", tmp_path / "g.h5", "--meta-columns", "age")
    assert r.exit_code == 1 and "--meta-columns age needs a metadata CSV" in r.output
    assert "class folders" in r.output and not (tmp_path / "g.h5").exists()


def test_metadata_change_updates_rows_without_inference(clinic, cache):
    before = load_cache(cache)
    with edited(clinic["csv"], "P1, 35 ,male", "P1,36,unknown"):  # img3's age and sex
        r = extract_cli(clinic["root"], clinic["csv"], cache)
    assert r.exit_code == 0, r.output
    after = load_cache(cache)
    assert by_id(after, "age")["img3"] == "36" and by_id(after, "sex")["img3"] == "unknown"
    assert by_id(after, "age")["img2"] == "30"  # the others as they were
    np.testing.assert_array_equal(after.features, before.features)
    assert list(after.image_ids) == list(before.image_ids)


def test_metadata_only_rerun_journals_no_features(clinic, cache, monkeypatch):
    """The rerun above needs no backbone: building one would fail here."""
    import bottleneck.extract.run as extract_module

    monkeypatch.setattr(extract_module, "_build", lambda *a, **k: pytest.fail("the backbone was built"))
    with edited(clinic["csv"], ",back,", ",scalp,"):
        r = extract_cli(clinic["root"], clinic["csv"], cache)
    assert r.exit_code == 0, r.output
    assert set(by_id(load_cache(cache), "site")[f"img{k}"] for k in (0, 3, 4, 7)) == {"scalp"}


def test_older_cache_without_meta_loads_and_gains_columns_on_rerun(clinic, cache, monkeypatch):
    with h5py.File(cache, "a") as f:  # as a version that stored no metadata left it
        del f["meta"]
        del f.attrs["meta_columns"]
    data = load_cache(cache)
    assert data.meta == {} and len(data.labels) == 8
    assert describe_cache(cache)["meta_columns"] == {}
    import bottleneck.extract.run as extract_module

    monkeypatch.setattr(extract_module, "_build", lambda *a, **k: pytest.fail("the backbone was built"))
    r = extract_cli(clinic["root"], clinic["csv"], cache)
    assert r.exit_code == 0, r.output
    assert by_id(load_cache(cache), "note")["img4"] == "seen twice, once by PK"


def test_a_journaled_batch_keeps_its_metadata(clinic, cache):
    """Batches an interrupted run journaled (a new row, a new column) are committed by the next writer with their
    metadata; a batch journaled by a version without metadata columns still applies."""
    config = CacheConfig.from_attrs(read_attrs(cache))
    row = dict(image_id="late", path="images/late.jpg", label="mel", group="P9", sha256="ab" * 32, width=40,
               height=30, meta={"sex": "female", "phototype": "II"})
    old_row = dict(row, image_id="older", sha256="cd" * 32, meta={})
    d = config.num_features
    with CacheWriter(cache, config) as w:
        w.lock.release()  # as a killed run leaves it: journaled, not committed
        w.write_batch([row], np.ones((1, d), np.float32))
        w.write_batch([old_row], np.ones((1, d), np.float32))
        batches = pending_batches(cache)
        arrays = Journal.read(batches[-1])
        w.journal.close_segment()  # the last batch as an older version journaled it: one .npz, without metadata
        os.truncate(batches[-1].path, batches[-1].offset)
        np.savez(journal_dir(cache) / f"batch-{batches[-1].seq:08d}.npz",
                 **{k: v for k, v in arrays.items() if k not in ("meta", "meta_names")})
        w.lock.acquire()
    data = load_cache(cache)
    assert list(data.meta) == [*COLUMNS, "phototype"]
    late, older = list(data.image_ids).index("late"), list(data.image_ids).index("older")
    assert (data.meta["sex"][late], data.meta["phototype"][late], data.meta["age"][late]) == ("female", "II", "")
    assert all(data.meta[c][older] == "" for c in data.meta)
    assert data.meta["phototype"][0] == "" and data.meta["age"][0] == expected(0)["age"]


@pytest.mark.slow
def test_merge_is_the_union_of_the_columns(clinic, tmp_path):
    root, csv = clinic["root"], clinic["csv"]
    shards = [tmp_path / "s0.h5", tmp_path / "s1.h5"]
    for i, (shard, cols) in enumerate(zip(shards, ("age,site", "sex,site"))):
        r = extract_cli(root, csv, shard, "--shard", f"{i}/2", "--meta-columns", cols)
        assert r.exit_code == 0, r.output
    held = [set(load_cache(s).image_ids) for s in shards]
    for args, out in (((), tmp_path / "copy.h5"), (("--virtual",), tmp_path / "virtual.h5")):
        r = run_cli("merge", *shards, "--out", out, *args)
        assert r.exit_code == 0, r.output
        data = load_cache(out)
        assert list(data.meta) == ["age", "site", "sex"] and len(data.labels) == 8
        for k in range(8):
            i = f"img{k}"
            assert by_id(data, "site")[i] == expected(k)["site"]
            assert by_id(data, "age")[i] == (expected(k)["age"] if i in held[0] else "")
            assert by_id(data, "sex")[i] == (expected(k)["sex"] if i in held[1] else "")
    with h5py.File(tmp_path / "virtual.h5") as f:
        assert f["meta/site"].is_virtual and not f["meta/age"].is_virtual  # in both shards: no copy


def test_info_lists_the_columns_with_their_counts(clinic):
    assert describe_cache(clinic["cache"])["meta_columns"] == {"age": 8, "sex": 8, "site": 8, "note": 2}
    r = run_cli("info", clinic["cache"])
    assert r.exit_code == 0, r.output
    assert "metadata columns (rows with a value): age (8), sex (8), site (8), note (2)" in r.output.splitlines()


def test_a_damaged_meta_columns_attribute_is_refused(cache):
    with h5py.File(cache, "a") as f:
        f.attrs["meta_columns"] = json.dumps(["age", "weight"])  # a column with no dataset
    with pytest.raises(CacheError, match="dataset 'meta/weight' is missing"):
        check_readable(cache)
    with h5py.File(cache, "a") as f:
        f.attrs["meta_columns"] = "age,sex"
    with pytest.raises(CacheError, match="attribute meta_columns is 'age,sex', not a JSON list"):
        load_cache(cache)
