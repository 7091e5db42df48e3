"""Fingerprints at extraction, on real files through the real backbone: every new row gets the perceptual hash of
the pixels the backbone saw, and a cache extracted before fingerprints gets them from a rerun of the same extract
command by decoding only (its vectors untouched, no backbone pass)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import h5py
import numpy as np
from conftest import TINY_ARGS, extract_opts, make_ham, run_cli, write_image

from bottleneck.cache.store import describe_cache, load_cache
from bottleneck.extract.run import extract
from bottleneck.images.decode import load_image
from bottleneck.images.fingerprint import perceptual_hash
from bottleneck.images.index import build_index


def expected_hashes(root, data) -> list[int]:
    """Computed here from the loader's pixels at the cache's size, independently of the extraction."""
    return [int(perceptual_hash(load_image(root / p, 32)[0])) for p in data.paths]


def forget_fingerprints(cache) -> None:
    """The cache as a version before fingerprints left it: no `phash` dataset."""
    with h5py.File(cache, "a") as f:
        del f["phash"]


def test_extract_stores_each_rows_fingerprint(tmp_path):
    root = make_ham(tmp_path / "HAM")
    o = extract_opts(tmp_path)
    extract(build_index(root), o)
    data = load_cache(o.cache)
    assert data.phash.dtype == np.uint64 and data.phash.shape == (12,)
    assert data.phash.tolist() == expected_hashes(root, data)
    assert len(set(data.phash.tolist())) == 12 and 0 not in data.phash
    assert describe_cache(o.cache)["fingerprints"] == 12


def test_rerun_on_a_cache_without_fingerprints_adds_them_by_decoding_only(tmp_path):
    root = make_ham(tmp_path / "HAM")
    o = extract_opts(tmp_path)
    extract(build_index(root), o)
    before = load_cache(o.cache)
    forget_fingerprints(o.cache)
    old = load_cache(o.cache)
    assert old.phash is None  # an older cache reads fine, without fingerprints
    info = run_cli("info", o.cache)
    assert info.exit_code == 0 and "fingerprints: none" in info.output and "rerun the extract command" in info.output
    with h5py.File(o.cache, "a") as f:  # a sign on the vectors: a backbone pass would overwrite it
        f["features"][0] = -f["features"][0]
    s = extract(build_index(root), o)
    assert (s.extracted, s.already_cached, s.fingerprinted, s.rows) == (0, 12, 12, 12)
    after = load_cache(o.cache)
    assert after.phash.tolist() == expected_hashes(root, after) == before.phash.tolist()
    np.testing.assert_array_equal(after.features[0], -before.features[0])  # vectors kept, not recomputed
    np.testing.assert_array_equal(after.features[1:], before.features[1:])
    assert list(after.image_ids) == list(before.image_ids) and after.labels.tolist() == before.labels.tolist()
    again = extract(build_index(root), o)
    assert again.fingerprinted == 0  # nothing left to add


def test_new_rows_of_an_older_cache_get_fingerprints_and_info_counts_the_rest(tmp_path):
    root = make_ham(tmp_path / "HAM", n_lesions=3)
    o = extract_opts(tmp_path)
    extract(build_index(root), o)
    forget_fingerprints(o.cache)
    grown = make_ham(tmp_path / "HAM", n_lesions=6)  # same folder, six more images
    index = build_index(grown)
    new = replace(index, entries=tuple(e for e in index.entries if e.image_id >= "ISIC_0000006"))  # only those
    s = extract(new, o)
    assert (s.extracted, s.fingerprinted) == (6, 0)
    data = load_cache(o.cache)
    assert data.phash[:6].tolist() == [0] * 6 and 0 not in data.phash[6:]  # NO_FINGERPRINT for the old rows
    assert data.phash[6:].tolist() == expected_hashes(grown, data)[6:]
    out = run_cli("info", o.cache).output
    assert "fingerprints: 6 of 12 rows" in out and "add the rest" in out


def test_cli_extract_says_how_many_fingerprints_it_added(tmp_path):
    root = make_ham(tmp_path / "HAM", n_lesions=2)
    cache = tmp_path / "c.h5"
    assert run_cli("extract", root, "--cache", cache, *TINY_ARGS).exit_code == 0
    forget_fingerprints(cache)
    res = run_cli("extract", root, "--cache", cache, *TINY_ARGS)
    assert res.exit_code == 0, res.output
    assert load_cache(cache).phash.all()
    assert "fingerprints added to 4 cached images" in res.output


def test_a_copy_under_another_id_gets_the_fingerprint_of_its_bytes(tmp_path):
    root = tmp_path / "data"
    for k in range(3):
        write_image(root / "mel" / f"m{k}.jpg", seed=k)
    o = extract_opts(tmp_path)
    extract(build_index(root), o)
    forget_fingerprints(o.cache)
    shutil.copyfile(root / "mel" / "m0.jpg", root / "mel" / "copy.jpg")  # same bytes, another id
    s = extract(build_index(root), o)
    assert (s.extracted, s.reused, s.fingerprinted) == (0, 1, 4)  # the copy's source has none: decoded too
    data = load_cache(o.cache)
    by_id = dict(zip(data.image_ids, data.phash.tolist()))
    assert 0 not in by_id.values() and by_id["mel/copy.jpg"] == by_id["mel/m0.jpg"]
    shutil.copyfile(root / "mel" / "m1.jpg", root / "mel" / "copy2.jpg")
    s = extract(build_index(root), o)
    assert (s.reused, s.fingerprinted) == (1, 0)  # copied from the cached row, nothing decoded
    data = load_cache(o.cache)
    by_id = dict(zip(data.image_ids, data.phash.tolist()))
    assert by_id["mel/copy2.jpg"] == by_id["mel/m1.jpg"] != 0
