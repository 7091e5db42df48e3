"""A cache knows what it holds (extract/identity.py): two image roots of one folder name get two default caches;
extract into a cache of another root or CSV is refused unless --append adds it on purpose (recorded); a CSV that
changes labels or groups of cached images is counted and recorded; an older cache adopts the first extract's
identity; `info` shows it. Real images, the real CLI, real HDF5."""

from __future__ import annotations

import json

import h5py
import pytest
from conftest import file_digest, make_ham, run_cli, write_image

from bottleneck.cache.store import load_cache

ARGS = ["--backbone", "mobilenet_v2", "--image-size", "32", "--weights", "none", "--dtype", "float32", "--quiet"]


def small_tree(root, seed=0, prefix="img"):
    """root/<class>/*.png: 2 classes x 2 images."""
    for c, cls in enumerate(("mel", "nv")):
        for i in range(2):
            write_image(root / cls / f"{prefix}{i}.png", seed=seed + 2 * c + i)
    return root


def attrs(path) -> dict:
    with h5py.File(path) as f:
        return dict(f.attrs)


@pytest.mark.slow
def test_two_roots_of_one_folder_name_get_two_default_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = small_tree(tmp_path / "ph2" / "images"), small_tree(tmp_path / "clinicB" / "images", seed=10)
    assert run_cli("extract", a, *ARGS).exit_code == 0
    r = run_cli("extract", b, *ARGS)
    assert r.exit_code == 0, r.output
    caches = sorted((tmp_path / "cache").glob("*.h5"))
    assert [p.name.split("-")[0] for p in caches] == ["clinicB", "ph2"]  # the parent names the `images` folder
    for path, root in zip(caches, (b, a)):
        ident = json.loads(attrs(path)["identity"])
        assert ident["root"] == str(root.resolve()) and ident["source"] == "folders" and ident["appended"] == []
        assert int(attrs(path)["n_rows"]) == 4 and attrs(path)["dataset"] == path.name.split("-")[0]


@pytest.mark.slow
def test_extract_into_a_cache_of_another_root_is_refused_and_leaves_it_as_it_was(tmp_path):
    a, b, cache = small_tree(tmp_path / "a"), small_tree(tmp_path / "b", seed=10), tmp_path / "c.h5"
    assert run_cli("extract", a, "--cache", cache, *ARGS).exit_code == 0
    before = file_digest(cache)
    r = run_cli("extract", b, "--cache", cache, *ARGS)
    assert r.exit_code == 1
    line = r.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert str(a.resolve()) in line and str(b.resolve()) in line and "--cache NEW" in line and "--append" in line
    assert file_digest(cache) == before and not (tmp_path / "c.h5.journal").exists()
    # the same root with another CSV is another dataset too
    ham = make_ham(tmp_path / "ham", n_lesions=2, images_per_lesion=1)
    hcache = tmp_path / "h.h5"
    assert run_cli("extract", ham, "--cache", hcache, *ARGS).exit_code == 0
    other = tmp_path / "other.csv"
    other.write_text((ham / "HAM10000_metadata.csv").read_text())
    r = run_cli("extract", ham, "--metadata", other, "--cache", hcache, *ARGS)
    assert r.exit_code == 1 and str(other.resolve()) in r.output and "HAM10000_metadata.csv" in r.output


@pytest.mark.slow
def test_append_adds_a_second_root_on_purpose_and_records_it(tmp_path):
    a, cache = small_tree(tmp_path / "a"), tmp_path / "c.h5"
    b = small_tree(tmp_path / "b", seed=10, prefix="other")  # other file names: other image ids
    assert run_cli("extract", a, "--cache", cache, *ARGS).exit_code == 0
    r = run_cli("extract", b, "--cache", cache, "--append", *ARGS)
    assert r.exit_code == 0, r.output
    got = attrs(cache)
    ident = json.loads(got["identity"])
    assert ident["root"] == str(a.resolve()) and got["root"] == str(a.resolve())  # rows keep the first root
    assert [x["root"] for x in ident["appended"]] == [str(b.resolve())] and ident["appended"][0]["at"]
    assert int(got["n_rows"]) == 8
    # a recorded root may be extracted again without --append; nothing changes
    before = file_digest(cache)
    assert run_cli("extract", b, "--cache", cache, *ARGS).exit_code == 0
    assert file_digest(cache) == before
    info = run_cli("info", cache).output
    assert f"identity: {a.resolve()} (source folders)" in info and f"appended: {b.resolve()}" in info
    # --append of images whose ids the cache holds (the same relative paths) would replace those rows: refused
    c = small_tree(tmp_path / "c", seed=20)
    r = run_cli("extract", c, "--cache", cache, "--append", *ARGS)
    assert r.exit_code == 1 and "mel/img0.png" in r.output and "--cache NEW" in r.output
    assert file_digest(cache) == before


@pytest.mark.slow
def test_a_csv_that_changes_labels_or_groups_is_counted_and_recorded(tmp_path):
    root, cache = make_ham(tmp_path / "HAM", n_lesions=3, images_per_lesion=2), tmp_path / "c.h5"
    assert run_cli("extract", root, "--cache", cache, *ARGS).exit_code == 0
    csv = root / "HAM10000_metadata.csv"
    text = csv.read_text()
    text = text.replace("HAM_0000000,ISIC_0000000,mel", "HAM_0000000,ISIC_0000000,bkl")
    text = text.replace("HAM_0000001,ISIC_0000002,nv", "HAM_0000001,ISIC_0000002,mel")
    text = text.replace("HAM_0000002,ISIC_0000005,bkl", "HAM_0000009,ISIC_0000005,bkl")
    csv.write_text(text)
    r = run_cli("extract", root, "--cache", cache, *ARGS)
    assert r.exit_code == 0, r.output
    assert "2 labels changed: ISIC_0000000 mel -> bkl, ISIC_0000002 nv -> mel (recorded in the cache)" in r.output
    assert "1 group changed: ISIC_0000005 HAM_0000002 -> HAM_0000009" in r.output
    got = attrs(cache)
    (record,) = json.loads(got["relabels"])
    assert (record["labels_changed"], record["groups_changed"]) == (2, 1)
    assert record["first"][0] == "ISIC_0000000 mel -> bkl" and record["metadata"] == str(csv.resolve())
    assert json.loads(got["identity"])["metadata_sha256"] == record["metadata_sha256"] == file_digest(csv)
    data = load_cache(cache, features=False)
    labels = {i: data.class_names[k] for i, k in zip(data.image_ids, data.labels)}
    assert labels["ISIC_0000000"] == "bkl" and labels["ISIC_0000002"] == "mel"
    assert "relabelled on" in run_cli("info", cache).output
    # the same CSV again: nothing changed, nothing recorded
    r = run_cli("extract", root, "--cache", cache, *ARGS)
    assert "changed" not in r.output and len(json.loads(attrs(cache)["relabels"])) == 1


@pytest.mark.slow
def test_an_older_cache_adopts_the_first_extracts_identity(tmp_path):
    a, b, cache = small_tree(tmp_path / "a"), small_tree(tmp_path / "b", seed=10, prefix="x"), tmp_path / "c.h5"
    assert run_cli("extract", a, "--cache", cache, *ARGS).exit_code == 0
    with h5py.File(cache, "a") as f:  # a cache written before the attribute
        del f.attrs["identity"]
    assert "identity: not recorded" in run_cli("info", cache).output
    # a rerun with nothing to extract records it all the same
    r = run_cli("extract", a, "--cache", cache, *ARGS)
    assert r.exit_code == 0 and "it now records this one's" in r.output
    assert json.loads(attrs(cache)["identity"])["root"] == str(a.resolve()) and int(attrs(cache)["n_rows"]) == 4
    with h5py.File(cache, "a") as f:
        del f.attrs["identity"]
    r = run_cli("extract", b, "--cache", cache, *ARGS)  # never refused: it adopts b's
    assert r.exit_code == 0, r.output
    assert json.loads(attrs(cache)["identity"])["root"] == str(b.resolve())
    assert run_cli("extract", a, "--cache", cache, *ARGS).exit_code == 1  # from now on it is b's cache


@pytest.mark.slow
def test_a_cache_at_the_name_from_before_the_root_hash_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = small_tree(tmp_path / "lesions")
    older = tmp_path / "cache" / "lesions-mobilenet_v2-none-s0-32-avg.h5"
    assert run_cli("extract", a, "--cache", older, *ARGS).exit_code == 0
    r = run_cli("extract", a, *ARGS)
    assert r.exit_code == 0 and f"cache: {older.relative_to(tmp_path)}" in r.output
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.h5")) == [older.name]
    # another root of that name gets its own cache, with the root's hash
    b = small_tree(tmp_path / "elsewhere" / "lesions", seed=10)
    assert run_cli("extract", b, *ARGS).exit_code == 0
    assert len(list((tmp_path / "cache").glob("lesions-*-mobilenet_v2-none-s0-32-avg.h5"))) == 1


def test_a_generic_folder_name_takes_its_parents(tmp_path):
    from bottleneck.images.index import build_index

    for rel, name in (("isic2019/ISIC_2019_Training_Input", "isic2019"), ("clinic/data/train/images", "clinic"),
                      ("HAM10000_images_part_1", "HAM10000_images_part_1"), ("derm7pt/img", "derm7pt")):
        root = small_tree(tmp_path / rel)
        assert build_index(root).name == name
