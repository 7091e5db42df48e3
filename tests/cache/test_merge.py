"""merge: shards of one extraction merge into the cache of one run, by copying or as virtual datasets; a shard
twice, a shard of another index or split, and a missing shard are refused before anything is written. A virtual
cache whose shards (to the bottom, virtual over virtual) changed since its merge is refused by every reader, until
the merge is run again."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import TINY_ARGS, make_ham, run_cli, write_image

from bottleneck.cache.features import FeatureReader
from bottleneck.cache.store import load_cache, read_attrs
from bottleneck.errors import CacheError


def _tree(root, extra=0):
    """3 classes x 4 images (as conftest's class_tree), plus `extra` more mel images."""
    k = 0
    for cls in ("bcc", "mel", "nevus benign"):
        for i in range(4):
            write_image(root / cls / f"img{i}{'.jpg' if i % 2 == 0 else '.png'}", seed=k)
            k += 1
    for i in range(extra):
        write_image(root / "mel" / f"extra{i}.jpg", seed=50 + i)
    return root


def _extract(data, cache, *args):
    r = run_cli("extract", data, *TINY_ARGS, "--cache", cache, *args)
    assert r.exit_code == 0, r.output
    return cache


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """One tree extracted whole and as shards 0/3, 1/3, 2/3 (extracted once for the module; tests copy them)."""
    tmp = tmp_path_factory.mktemp("merge")
    data = _tree(tmp / "data")
    parts = [_extract(data, tmp / f"part{i}.h5", "--shard", f"{i}/3") for i in range(3)]
    return {"data": data, "whole": _extract(data, tmp / "whole.h5"), "parts": parts}


@pytest.fixture
def parts(caches, tmp_path):
    """The module's shard caches, copied into this test's folder."""
    return [shutil.copy(p, tmp_path / p.name) for p in caches["parts"]]


def _same_rows(whole, merged):
    a, b = load_cache(whole), load_cache(merged)
    order = {i: k for k, i in enumerate(b.image_ids)}
    idx = [order[i] for i in a.image_ids]
    assert len(b.image_ids) == len(a.image_ids) == 12 and b.class_names == a.class_names
    np.testing.assert_allclose(b.features[idx], a.features, atol=1e-3)
    np.testing.assert_array_equal(b.labels[idx], a.labels)
    assert list(b.paths[idx]) == list(a.paths) and list(b.sha256[idx]) == list(a.sha256)


def test_shards_merge_into_the_same_cache_as_one_run(caches, parts, tmp_path):
    whole = read_attrs(caches["whole"])
    shard_attrs = [read_attrs(p) for p in parts]
    assert [a["shard"] for a in shard_attrs] == ["0/3", "1/3", "2/3"] and whole["shard"] == ""
    assert {a["index_fingerprint"] for a in shard_attrs} == {whole["index_fingerprint"]}  # one index
    assert {int(a["index_images"]) for a in shard_attrs} == {12}
    merged = tmp_path / "merged.h5"
    r = run_cli("merge", *parts, "--out", merged)
    assert r.exit_code == 0, r.output
    _same_rows(caches["whole"], merged)
    attrs = read_attrs(merged)
    assert attrs["shard"] == "" and json.loads(attrs["shards"]) == ["0/3", "1/3", "2/3"]
    assert json.loads(attrs["missing_shards"]) == [] and attrs["index_fingerprint"] == whole["index_fingerprint"]
    assert attrs["dataset"] == whole["dataset"] and json.loads(attrs["merged_from"]) == [str(p) for p in parts]
    info = run_cli("info", merged)
    assert "shards: 0/3, 1/3, 2/3 of index " + whole["index_fingerprint"][:12] in info.output
    assert "shard: 1/3 of index" in run_cli("info", parts[1]).output

    other = _extract(caches["data"], tmp_path / "other.h5", "--image-size", "48")  # overrides TINY_ARGS' 32
    r = run_cli("merge", caches["whole"], other, "--out", tmp_path / "bad.h5")
    assert r.exit_code == 1 and "image size" in r.output and not (tmp_path / "bad.h5").exists()


def test_the_same_shard_twice_is_refused(parts, tmp_path):
    out = tmp_path / "out.h5"
    r = run_cli("merge", parts[0], parts[0], parts[1], parts[2], "--out", out)
    assert r.exit_code == 1 and f"cache {parts[0]} is passed twice" in r.output
    again = shutil.copy(parts[0], tmp_path / "again.h5")  # the same shard under another name
    r = run_cli("merge", *parts, again, "--out", out)
    assert r.exit_code == 1 and "shard 0/3 of index" in r.output and "passed twice" in r.output
    assert str(parts[0]) in r.output and str(again) in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_shard_is_refused_unless_allow_partial(caches, parts, tmp_path):
    out = tmp_path / "out.h5"
    r = run_cli("merge", parts[0], parts[2], "--out", out)
    assert r.exit_code == 1 and "shard 1/3 of index" in r.output and "is missing" in r.output
    assert "--allow-partial" in r.output and not out.exists()
    r = run_cli("merge", parts[0], parts[2], "--out", out, "--allow-partial")
    assert r.exit_code == 0 and "missing shards: 1/3" in r.output
    rows = [len(load_cache(p, features=False).image_ids) for p in parts]
    attrs = read_attrs(out)
    assert int(attrs["n_rows"]) == rows[0] + rows[2] and json.loads(attrs["missing_shards"]) == ["1/3"]
    assert "missing 1/3" in run_cli("info", out).output
    # The partial merge counts as the shards it holds: merged with the missing one, it is whole.
    r = run_cli("merge", out, parts[1], "--out", tmp_path / "whole.h5")
    assert r.exit_code == 0, r.output
    attrs = read_attrs(tmp_path / "whole.h5")
    assert int(attrs["n_rows"]) == sum(rows) and json.loads(attrs["shards"]) == ["0/3", "1/3", "2/3"]
    assert json.loads(attrs["missing_shards"]) == []
    # A whole extraction of the same index holds every shard: nothing is missing beside it.
    r = run_cli("merge", caches["whole"], parts[0], "--out", tmp_path / "again.h5")
    assert r.exit_code == 0 and json.loads(read_attrs(tmp_path / "again.h5")["missing_shards"]) == [], r.output


def test_a_shard_of_another_index_or_split_is_refused(caches, parts, tmp_path):
    grown = _tree(tmp_path / "data", extra=1)  # the same tree with one image added: another index
    stranger = _extract(grown, tmp_path / "stranger1.h5", "--shard", "1/3")
    r = run_cli("merge", parts[0], stranger, parts[2], "--out", tmp_path / "out.h5")
    assert r.exit_code == 1 and f"cache {stranger} is shard 1/3 of another index" in r.output
    assert str(parts[0]) in r.output and not (tmp_path / "out.h5").exists()
    half = _extract(caches["data"], tmp_path / "half.h5", "--shard", "1/2")
    r = run_cli("merge", *parts, half, "--out", tmp_path / "out.h5")
    assert r.exit_code == 1 and f"cache {half} is shard 1/2" in r.output and "--shard I/3" in r.output
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.slow
def test_a_virtual_merge_reads_the_shards_in_place(caches, parts, tmp_path):
    copied, virtual = tmp_path / "copied.h5", tmp_path / "virtual.h5"
    assert run_cli("merge", *parts, "--out", copied).exit_code == 0
    r = run_cli("merge", *parts, "--out", virtual, "--virtual")
    assert r.exit_code == 0 and "virtual datasets" in r.output, r.output
    _same_rows(caches["whole"], virtual)
    a, b = load_cache(copied), load_cache(virtual)
    assert list(a.image_ids) == list(b.image_ids) and list(a.groups) == list(b.groups)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    assert virtual.stat().st_size * 2 < copied.stat().st_size
    with h5py.File(virtual) as f:
        assert f["features"].is_virtual and f["image_id"].is_virtual and f["row_keys"].is_virtual
        np.testing.assert_array_equal(f["row_keys"][:], h5py.File(copied)["row_keys"][:12])
    attrs = read_attrs(virtual)
    assert attrs["virtual"] and json.loads(attrs["virtual_sources"]) == [p.name for p in parts]  # relative

    # The folder moves with its shards; a train-head run reads it like any cache.
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (*parts, virtual):
        shutil.move(p, moved / p.name)
    r = run_cli("train-head", moved / "virtual.h5", "--out", tmp_path / "run", "--epochs", "2", "--hidden", "8",
                "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]

    # Extending it is refused, untouched; a missing shard file is refused rather than read as zeros.
    before = (moved / "virtual.h5").read_bytes()
    r = run_cli("extract", caches["data"], *TINY_ARGS, "--cache", moved / "virtual.h5")
    assert r.exit_code == 1 and "is a virtual merge of shards; extract into a shard, or merge by copying" in r.output
    assert (moved / "virtual.h5").read_bytes() == before
    (moved / "part1.h5").unlink()
    r = run_cli("info", moved / "virtual.h5")
    assert r.exit_code == 1 and "shard part1.h5" in r.output and "missing" in r.output


def test_virtual_refuses_shards_whose_class_lists_differ(parts, tmp_path):
    with h5py.File(parts[2], "r+") as f:  # as if shard 2 had been extracted from an index with another class
        f.attrs["class_names"] = json.dumps(json.loads(f.attrs["class_names"]) + ["zebra"])
    r = run_cli("merge", *parts, "--out", tmp_path / "v.h5", "--virtual")
    assert r.exit_code == 1 and "merge by copying" in r.output and not (tmp_path / "v.h5").exists()


# --- virtual caches checked to the bottom: what the merge read from each shard, against what it holds now ---------

@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    """A HAM10000-style folder of 18 images extracted as shards i/4 (4, 8, 3 and 3 rows), once for the module."""
    tmp = tmp_path_factory.mktemp("ham")
    data = make_ham(tmp / "HAM10000", n_lesions=9)
    return {"data": data, "shards": [_extract(data, tmp / f"s{i}.h5", "--shard", f"{i}/4") for i in range(4)]}


@pytest.fixture
def shards(ham, tmp_path):
    """The module's HAM shards, copied into this test's folder."""
    return [shutil.copy(p, tmp_path / p.name) for p in ham["shards"]]


def _merge(caches, out, *options):
    """`merge --virtual` of `caches` into `out`, loaded."""
    r = run_cli("merge", *caches, "--out", out, "--virtual", *options)
    assert r.exit_code == 0, r.output
    return load_cache(out)


def _refused(cache, run, *words) -> str:
    """`info` and `train-head` refuse `cache` in one line holding `words`, exit 1, and write no run."""
    for args in (("info", cache), ("train-head", cache, "--out", run, "--epochs", "1", "--hidden", "8", "--quiet")):
        r = run_cli(*args)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.output
        assert all(w in lines[0] for w in words), r.output
    assert not run.exists()
    return lines[0]


def _rows_of(merged, caches):
    """`merged` holds exactly the rows of `caches`, in turn: ids, labels, features."""
    parts = [load_cache(c) for c in caches]
    assert list(merged.image_ids) == [i for p in parts for i in p.image_ids] and "" not in set(merged.image_ids)
    names = [[p.class_names[k] for k in p.labels] for p in parts]
    assert [merged.class_names[k] for k in merged.labels] == [n for part in names for n in part]
    np.testing.assert_array_equal(merged.features, np.concatenate([p.features for p in parts]))


def _break_one_image(data, shard) -> str:
    """Make one image of `shard` unreadable (a re-extraction then holds one row fewer); its id."""
    cache = load_cache(shard, features=False)
    (data / cache.paths[0]).write_bytes(b"not an image any more")
    return cache.image_ids[0]


def test_a_virtual_cache_over_a_shard_re_extracted_with_fewer_rows_is_refused(ham, shards, tmp_path):
    virtual = tmp_path / "v.h5"
    _merge(shards, virtual)
    record = json.loads(read_attrs(virtual)["virtual_record"])
    assert [(r["file"], r["n_rows"]) for r in record] == [("s0.h5", 4), ("s1.h5", 8), ("s2.h5", 3), ("s3.h5", 3)]
    data = shutil.copytree(ham["data"], tmp_path / "HAM10000")
    gone = _break_one_image(data, shards[1])
    shards[1].unlink()
    _extract(data, shards[1], "--shard", "1/4")  # re-extracted: 7 rows now, where the merge read 8
    again = f"merge again: bottleneck merge {' '.join(map(str, shards))} --out {virtual} --virtual"
    line = _refused(virtual, tmp_path / "run", f"shard {shards[1]} changed since the merge: it has 7 rows, the merge "
                    "recorded 8", again)
    assert "v.h5 is a virtual merge whose" in line
    merged = _merge(shards, virtual)  # the same merge again: the virtual cache is rebuilt over the shards as they are
    assert len(merged.image_ids) == 17 and gone not in set(merged.image_ids)
    _rows_of(merged, shards)
    assert run_cli("info", virtual).exit_code == 0


@pytest.mark.slow
def test_a_virtual_cache_over_a_shard_with_another_class_list_is_refused(tmp_path):
    data = make_ham(tmp_path / "HAM10000")
    parts = [_extract(data, tmp_path / f"s{i}.h5", "--shard", f"{i}/4") for i in range(4)]
    virtual = tmp_path / "v.h5"
    _merge(parts, virtual)
    relabelled = {load_cache(p, features=False).image_ids[0] for p in parts}  # one image of each shard
    csv = data / "HAM10000_metadata.csv"
    lines = [line.split(",") for line in csv.read_text().splitlines()]
    csv.write_text("".join(",".join(f[:2] + ["zebra"] + f[3:] if f[1] in relabelled else f) + "\n" for f in lines))
    _extract(data, parts[2], "--shard", "2/4")  # its label is updated in place; the class list gains zebra
    assert load_cache(parts[2], features=False).class_names == ["bkl", "mel", "nv", "zebra"]
    _refused(virtual, tmp_path / "run", f"shard {parts[2]} changed since the merge: it has the classes bkl, mel, nv, "
             "zebra, the merge recorded bkl, mel, nv", "merge again")
    for i in (0, 1, 3):  # the other shards of the relabelled index
        _extract(data, parts[i], "--shard", f"{i}/4")
    merged = _merge(parts, virtual)
    assert {i for i, k in zip(merged.image_ids, merged.labels) if merged.class_names[k] == "zebra"} == relabelled
    _rows_of(merged, parts)
    assert run_cli("info", virtual).exit_code == 0


def test_a_virtual_cache_over_a_shard_with_other_ids_of_the_same_count_is_refused(shards, tmp_path):
    virtual = tmp_path / "v.h5"
    _merge(shards, virtual)
    _swap(shards[2], shards[3])  # shards 2/4 and 3/4, 3 rows each
    _refused(virtual, tmp_path / "run", f"shard {shards[2]} changed since the merge: it holds other image ids than "
             "the merge recorded (the same 3 rows", "merge again")
    _rows_of(_merge(shards, virtual), shards)


@pytest.mark.slow
def test_a_virtual_merge_of_a_virtual_merge_is_checked_to_the_bottom(ham, shards, tmp_path):
    inner, outer = tmp_path / "inner.h5", tmp_path / "outer.h5"
    _merge(shards[:2], inner, "--allow-partial")
    merged = _merge([inner, *shards[2:]], outer)  # the happy path: exactly the shards' rows and features
    assert len(merged.image_ids) == 18 and json.loads(read_attrs(outer)["shards"]) == ["0/4", "1/4", "2/4", "3/4"]
    _rows_of(merged, shards)
    r = run_cli("train-head", outer, "--out", tmp_path / "ok", "--epochs", "1", "--hidden", "8", "--quiet")
    assert r.exit_code == 0, r.output

    shards[1].rename(tmp_path / "away.h5")  # an inner shard missing
    _refused(outer, tmp_path / "run", f"cache {outer} reads the virtual merge {inner}, whose shard s1.h5", "is missing")
    (tmp_path / "away.h5").rename(shards[1])
    assert run_cli("info", outer).exit_code == 0  # put back, as it was: nothing to merge again

    data = shutil.copytree(ham["data"], tmp_path / "HAM10000")
    _break_one_image(data, shards[1])
    shards[1].unlink()
    _extract(data, shards[1], "--shard", "1/4")  # an inner shard changed: 7 rows where the inner merge read 8
    _refused(outer, tmp_path / "run", f"cache {outer} reads the virtual merge {inner}, whose shard {shards[1]} changed "
             "since the merge: it has 7 rows, the merge recorded 8",
             f"merge again: bottleneck merge {shards[0]} {shards[1]} --out {inner} --virtual --allow-partial, then "
             f"{outer} the same way")
    _merge(shards[:2], inner, "--allow-partial")  # the inner merge again; the outer one still reads 12 rows
    _refused(outer, tmp_path / "run", f"shard {inner} changed since the merge: it has 11 rows, the merge recorded 12")
    merged = _merge([inner, *shards[2:]], outer)
    assert len(merged.image_ids) == 17
    _rows_of(merged, shards)


def _swap(a, b):
    """Two shard files trade names (as a job scheduler that wrote each to the other's path)."""
    a.rename(a.with_name("swap.h5"))
    b.rename(a)
    a.with_name("swap.h5").rename(b)


def test_a_streamed_reader_checks_the_shards_again_when_one_changes(shards, tmp_path):
    virtual = tmp_path / "v.h5"
    merged = _merge(shards, virtual)
    reader = FeatureReader.open(virtual, memory_gb=0.001)
    np.testing.assert_array_equal(reader[np.arange(18)], merged.features)
    _swap(shards[2], shards[3])  # between two reads of one training run
    with pytest.raises(CacheError, match=f"shard {shards[2]} changed since the merge: it holds other image ids"):
        reader[np.arange(3)]


def test_a_virtual_cache_from_before_the_record_is_checked_as_far_as_it_can_be(ham, shards, tmp_path):
    virtual = tmp_path / "v.h5"
    _merge(shards, virtual)
    with h5py.File(virtual, "r+") as f:  # as the previous version wrote it
        del f.attrs["virtual_record"]
    r = run_cli("info", virtual)
    assert r.exit_code == 0 and r.output.count("warning: ") == 1, r.output
    assert f"cache {virtual} is a virtual merge made before merges recorded" in r.output
    data = shutil.copytree(ham["data"], tmp_path / "HAM10000")
    _break_one_image(data, shards[1])
    shards[1].unlink()
    _extract(data, shards[1], "--shard", "1/4")
    _refused(virtual, tmp_path / "run", f"shard {shards[1]} changed since the merge: it has 7 rows, the merge mapped 8")
    _rows_of(_merge(shards, virtual), shards)  # merged again: recorded, checked in full, no warning
    r = run_cli("info", virtual)
    assert r.exit_code == 0 and "warning: " not in r.output and "virtual_record" in read_attrs(virtual)
    r = run_cli("merge", virtual, "--out", virtual, "--virtual")  # never over a file the merge reads
    assert r.exit_code == 1 and "is one of the caches this merge reads" in r.output
