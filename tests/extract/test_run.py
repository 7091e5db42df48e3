"""Extraction end to end on real files: real Keras backbone (weights=None), real HDF5 through h5py.
The writer's own guarantees (lock, journal, crash safety, refusing a mixed cache, merge) are in test_cache_write.py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import TINY_ARGS, extract_opts, file_digest, make_ham, run_cli, write_image

from bottleneck.backbones.registry import create_backbone, get_spec
from bottleneck.cache.store import load_cache, read_failed
from bottleneck.errors import ImageDecodeError
from bottleneck.extract.run import ExtractOptions, extract
from bottleneck.images.decode import load_image
from bottleneck.images.index import build_index


def model_features(o: ExtractOptions, paths) -> np.ndarray:
    """The in-process backbone's output on the same images, through the same loader."""
    spec = get_spec(o.backbone)
    model = create_backbone(o.backbone, o.weights, o.image_size, o.pooling, o.seed)
    x = np.stack([load_image(p, o.image_size)[0] for p in paths]).astype(np.float32)
    return model.predict(spec.preprocess_fn()(x), verbose=0)


def test_ham10000_cache_contents(tmp_path):
    root = make_ham(tmp_path / "HAM")
    o = extract_opts(tmp_path)
    s = extract(build_index(root), o)
    assert (s.extracted, s.already_cached, len(s.failed), s.rows) == (12, 0, 0, 12)
    c = load_cache(o.cache)
    assert c.features.shape == (12, 512)
    with h5py.File(o.cache) as f:
        assert f["features"].dtype == np.float16
        assert f.attrs["backbone"] == "vgg16" and f.attrs["weights"] == "none"
        assert int(f.attrs["input_size"]) == 32 and f.attrs["pooling"] == "avg"
        assert int(f.attrs["schema_version"]) == 1 and int(f.attrs["n_rows"]) == 12
        assert "tensorflow" in json.loads(f.attrs["library_versions"])
        assert f.attrs["source"] == "ham10000"
    assert c.class_names == ["bkl", "mel", "nv"]
    assert list(c.image_ids) == [f"ISIC_{k:07d}" for k in range(12)]
    assert c.groups[0] == c.groups[1] == "HAM_0000000"
    assert [c.class_names[i] for i in c.labels[:4]] == ["mel", "mel", "nv", "nv"]
    first = root / c.paths[0]
    assert c.sha256[0] == file_digest(first)
    assert tuple(c.sizes[0]) == (40, 30)
    expected = model_features(o, [root / p for p in c.paths])
    np.testing.assert_allclose(c.features, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_weights_file_features_equal_in_process_model(tmp_path, class_tree):
    """--weights PATH: a weights file the test saves itself, loaded for extraction."""
    donor = create_backbone("vgg16", "none", 32, "avg", seed=123)
    wfile = tmp_path / "donor.weights.h5"
    donor.save_weights(wfile)
    o = extract_opts(tmp_path, weights=str(wfile), seed=0)  # another seed: only the file may decide the weights
    extract(build_index(class_tree), o)
    c = load_cache(o.cache)
    assert c.attrs["weights_sha256"] == file_digest(wfile)
    x = np.stack([load_image(class_tree / p, 32)[0] for p in c.paths]).astype(np.float32)
    expected = donor.predict(get_spec("vgg16").preprocess_fn()(x), verbose=0)
    np.testing.assert_allclose(c.features, expected, rtol=1e-2, atol=1e-2)
    random_init = model_features(extract_opts(tmp_path, seed=0), [class_tree / p for p in c.paths])
    assert not np.allclose(c.features, random_init, atol=1e-2)


def test_a_rerun_counts_the_rows_it_recovers_from_the_journal_apart(tmp_path, class_tree, monkeypatch):
    """A rerun that commits what an interrupted run journaled once called those rows "already cached"."""
    import bottleneck.cache.writer as cache_write
    from bottleneck.cache.journal import pending_batches
    from bottleneck.errors import CacheError

    o = extract_opts(tmp_path)
    extract(build_index(class_tree), o)
    for k in range(5):
        write_image(class_tree / "mel" / f"new{k}.jpg", seed=90 + k)
    monkeypatch.setattr(cache_write, "free_bytes", lambda folder: 4096)  # the commit of the new rows fails
    with pytest.raises(CacheError, match="free space and rerun"):
        extract(build_index(class_tree), o)
    assert len(pending_batches(o.cache)) == 2 and len(load_cache(o.cache).image_ids) == 12
    monkeypatch.undo()
    r = run_cli("extract", class_tree, *TINY_ARGS, "--batch-size", 4, "--cache", o.cache)
    assert r.exit_code == 0, r.output
    assert ("images: 17 indexed, 0 extracted, 5 recovered from the journal, 12 already cached, 0 reused (same "
            "bytes), 0 failed") in r.output.splitlines()
    assert len(load_cache(o.cache).image_ids) == 17 and not pending_batches(o.cache)
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.recovered, s.already_cached) == (0, 0, 17)


def test_rerun_skips_cached_and_adds_only_new_images(tmp_path, class_tree):
    o = extract_opts(tmp_path)
    extract(build_index(class_tree), o)
    before = load_cache(o.cache)
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.already_cached) == (0, 12)
    write_image(class_tree / "mel" / "new.jpg", seed=77)
    write_image(class_tree / "akiec" / "first.png", seed=78)  # a new class is appended, indices stay
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.already_cached, s.rows) == (2, 12, 14)
    after = load_cache(o.cache)
    assert after.class_names == ["bcc", "mel", "nevus benign", "akiec"]
    np.testing.assert_array_equal(after.features[:12], before.features)
    np.testing.assert_array_equal(after.labels[:12], before.labels)
    assert after.class_names[after.labels[list(after.image_ids).index("akiec/first.png")]] == "akiec"


def test_identical_bytes_under_another_id_reuse_the_vector(tmp_path, class_tree):
    o = extract_opts(tmp_path)
    extract(build_index(class_tree), o)
    (class_tree / "bcc" / "copy.jpg").write_bytes((class_tree / "bcc" / "img0.jpg").read_bytes())
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.reused) == (0, 1)
    c = load_cache(o.cache)
    ids = list(c.image_ids)
    np.testing.assert_array_equal(c.features[ids.index("bcc/copy.jpg")], c.features[ids.index("bcc/img0.jpg")])


def test_bad_files_are_listed_and_the_run_goes_on(tmp_path, class_tree):
    good = (class_tree / "mel" / "img0.jpg").read_bytes()
    (class_tree / "mel" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (class_tree / "mel" / "empty.png").write_bytes(b"")
    (class_tree / "mel" / "notes.txt").write_text("clinic notes")
    write_image(class_tree / "mel" / "really_png.jpg", seed=5, fmt="PNG")  # decoded by content
    write_image(class_tree / "mel" / "gray.jpg", seed=6, mode="L")
    write_image(class_tree / "mel" / "cmyk.jpg", seed=7, mode="CMYK")
    o = extract_opts(tmp_path)
    s = extract(build_index(class_tree), o)
    failed = dict(read_failed(o.cache))
    assert set(failed) == {"mel/truncated.jpg", "mel/empty.png", "mel/notes.txt"}
    assert "empty" in failed["mel/empty.png"] and "not an image" in failed["mel/notes.txt"]
    assert s.extracted == 15 and load_cache(o.cache).features.shape[0] == 15
    # fixing a file takes it off the failed list on the next run
    (class_tree / "mel" / "truncated.jpg").write_bytes(good)
    extract(build_index(class_tree), o)
    assert set(dict(read_failed(o.cache))) == {"mel/empty.png", "mel/notes.txt"}


def test_strict_makes_a_bad_file_fatal(tmp_path, class_tree):
    (class_tree / "mel" / "empty.jpg").write_bytes(b"")
    o = extract_opts(tmp_path, strict=True)
    with pytest.raises(ImageDecodeError, match="mel/empty.jpg: empty file"):
        extract(build_index(class_tree), o)
    # the batches computed up to the bad image were journaled (on the journal thread) and committed
    assert list(dict(read_failed(o.cache))) == ["mel/empty.jpg"]
    assert len(load_cache(o.cache).image_ids) >= 4


@pytest.mark.slow
def test_the_backbone_is_built_only_when_an_image_needs_it(tmp_path, class_tree):
    """It is built while the files hash when image ids are new; bytes changed under a cached id show only once
    hashed, and then it is built after."""
    o = extract_opts(tmp_path)
    first = extract(build_index(class_tree), o)
    assert first.extracted == 12 and first.build_seconds > 0 and first.seconds > first.build_seconds
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.already_cached, s.build_seconds, s.devices) == (0, 12, 0.0, [])
    before = load_cache(o.cache)
    write_image(class_tree / "mel" / "img0.jpg", seed=99)  # new bytes, same image id
    s = extract(build_index(class_tree), o)
    assert (s.extracted, s.already_cached) == (1, 11) and s.build_seconds > 0
    after = load_cache(o.cache)
    k = list(after.image_ids).index("mel/img0.jpg")
    assert after.sha256[k] == file_digest(class_tree / "mel" / "img0.jpg") != before.sha256[k]


def test_label_fix_in_metadata_updates_rows_without_inference(tmp_path):
    root = make_ham(tmp_path / "HAM")
    o = extract_opts(tmp_path)
    extract(build_index(root), o)
    csv = root / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text().replace("HAM_0000000,ISIC_0000000,mel", "HAM_0000000,ISIC_0000000,bkl"))
    s = extract(build_index(root), o)
    assert s.extracted == 0
    c = load_cache(o.cache)
    assert c.class_names[c.labels[0]] == "bkl"


def test_default_cache_name_under_cache_dir(tmp_path, class_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("extract", class_tree, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    # `data` is a generic folder name: the dataset takes its parent's, and the root's hash follows it
    (path,) = (tmp_path / "cache").glob("*.h5")
    assert path.name.startswith(f"{tmp_path.name}-") and path.name.endswith("-vgg16-none-s0-32-avg.h5")
    with h5py.File(path) as f:
        assert int(f.attrs["n_rows"]) == 12
