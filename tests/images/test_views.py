"""Augmented views in the cache: real transforms, extension of old caches, --augment draws, TTA averages."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import TINY, make_ham, write_image

from bottleneck.backbones.registry import create_backbone, get_spec
from bottleneck.cache.store import load_cache, read_views
from bottleneck.errors import InputError
from bottleneck.extract.run import ExtractOptions, extract
from bottleneck.heads.model import HeadConfig, predict_proba
from bottleneck.images.decode import load_image
from bottleneck.images.index import build_index
from bottleneck.images.views import view_sampler
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.runs.directory import load_run
from bottleneck.runs.evaluate import evaluate_run
from bottleneck.runs.views import tta_proba

FAST = HeadConfig(epochs=4, patience=3, hidden=(32,))


def opts(tmp_path, **kw):
    return ExtractOptions(**{**TINY, "cache": tmp_path / "v.h5", "batch_size": 4, "progress": False, **kw})


@pytest.fixture
def square_tree(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        write_image(root / ("mel" if i % 2 else "nv") / f"{i}.png", seed=i, size=(32, 32))  # no resize needed
    return root


def features_of(arrays) -> np.ndarray:
    model = create_backbone("vgg16", "none", 32, "avg", 0)
    x = np.stack(arrays).astype(np.float32)
    return model.predict(get_spec("vgg16").preprocess_fn()(x), verbose=0)


@pytest.mark.slow
def test_stored_views_are_the_real_transforms(tmp_path, square_tree):
    s = extract(build_index(square_tree), opts(tmp_path, views=9))
    assert s.views == 9
    c = load_cache(tmp_path / "v.h5")
    views = read_views(tmp_path / "v.h5")
    assert views.shape == (6, 9, 512) and c.views_ok.all() and c.n_views == 9
    row = list(c.image_ids).index("nv/0.png")
    img = load_image(square_tree / "nv" / "0.png")[0]
    expected = features_of([np.rot90(img, 1), np.rot90(img, 2), np.rot90(img, 3), np.fliplr(img),
                            np.fliplr(np.rot90(img, 1))])
    for k, want in zip((1, 2, 3, 4, 5), expected):  # views 1-3: rotations, 4: mirror, 5: mirror of rot90
        np.testing.assert_allclose(views[row, k - 1], want, atol=2e-3, rtol=1e-2)
    assert not np.allclose(views[row, 0], c.features[row], atol=1e-3)
    # views beyond the dihedral group are random crops with jitter, but reproducible
    again = tmp_path / "again.h5"
    extract(build_index(square_tree), opts(tmp_path, views=9, cache=again))
    np.testing.assert_array_equal(read_views(again), views)
    assert not np.allclose(views[:, 7], views[:, 8], atol=1e-3)


@pytest.mark.slow
def test_an_old_cache_gains_views_without_recomputing_the_plain_vectors(tmp_path, square_tree):
    path = tmp_path / "v.h5"
    extract(build_index(square_tree), opts(tmp_path))
    with h5py.File(path, "r+") as f:  # mark the plain vectors: a recomputation would overwrite the mark
        f["features"][0] = 7.0
    s = extract(build_index(square_tree), opts(tmp_path, views=2))
    assert (s.extracted, s.views_added, s.views) == (0, 6, 2)
    c = load_cache(path)
    assert c.views_ok.all() and np.all(c.features[0] == 7.0)
    # more views later: only the missing ones are computed, the stored ones stay
    first = read_views(path)
    s = extract(build_index(square_tree), opts(tmp_path, views=3))
    assert s.views_added == 6
    np.testing.assert_array_equal(read_views(path)[:, :2], first)
    # a plain extract of new images into a cache with views gives the new rows their views too
    write_image(square_tree / "nv" / "new.png", seed=99, size=(32, 32))
    s = extract(build_index(square_tree), opts(tmp_path))
    assert s.extracted == 1 and load_cache(path).views_ok.all()


def test_augment_draws_different_views_across_epochs_streamed_from_disk(tmp_path, square_tree):
    path = tmp_path / "v.h5"
    extract(build_index(square_tree), opts(tmp_path, views=7))
    c = load_cache(path)
    with h5py.File(path, "r") as f:
        sampler = view_sampler(c.features, f["views"], np.arange(6), c.labels, batch_size=4, seed=0)
        first = [sampler[i] for i in range(len(sampler))]
        sampler.on_epoch_end()
        second = [sampler[i] for i in range(len(sampler))]
        x1 = np.concatenate([b[0] for b in first])
        x2 = np.concatenate([b[0] for b in second])
        assert not np.allclose(np.sort(x1, axis=0), np.sort(x2, axis=0))
        assert not np.array_equal(sampler.draws[0], sampler.draws[1])
        # each row's vector is exactly its drawn view (0 = plain)
        views = read_views(path)
        pos = sampler.order[:4]
        for j, p in enumerate(pos):
            k = sampler.choice[p]
            want = c.features[p] if k == 0 else views[p, k - 1]
            np.testing.assert_allclose(second[0][0][j], want)


@pytest.mark.slow
def test_train_head_augment_tta_end_to_end_and_old_caches_still_work(tmp_path, synth_run):
    # a run off a cache without views (the session's) has no comparison of views
    assert "views_comparison" not in json.loads((synth_run["run"] / "metrics.json").read_text())
    root = make_ham(tmp_path / "HAM", n_lesions=9, images_per_lesion=2)
    plain_cache = tmp_path / "plain.h5"
    extract(build_index(root), opts(tmp_path, cache=plain_cache))
    with pytest.raises(InputError, match="holds no augmented views; add them with"):
        train_head_run(plain_cache, FAST, RunOptions(out=tmp_path / "x", augment=True, progress=False))
    assert not (tmp_path / "x").exists()

    extract(build_index(root), opts(tmp_path, cache=plain_cache, views=3))  # TTA predicts once per view and block
    r = train_head_run(plain_cache, FAST, RunOptions(out=tmp_path / "aug", augment=True, tta=True,
                                                      views_memory_gb=0, progress=False))
    comp = r.metrics["views_comparison"]
    assert set(comp) == {"plain head (no views)", "this head (augment), plain view only",
                         "this head (augment), TTA over 4 views"}
    report = (r.run_dir / "report.md").read_text()
    assert "plain head (no views)" in report and "--tta" in report
    config = json.loads((r.run_dir / "config.json").read_text())
    assert config["views"] == {"stored": 3, "augment": True, "tta": True}
    # TTA is the mean of the head's probabilities over the plain vector and the 3 views
    _, head = load_run(r.run_dir)
    data = load_cache(plain_cache)
    rows = np.arange(5)
    manual = np.mean([predict_proba(head, data.features[rows])]
                     + [predict_proba(head, v) for v in np.moveaxis(read_views(plain_cache, rows), 1, 0)], axis=0)
    np.testing.assert_allclose(tta_proba(head, data, rows, predict_proba(head, data.features[rows])), manual,
                               atol=1e-6)
    ev = evaluate_run(r.run_dir, tta=True)
    assert ev.metrics["balanced_accuracy"] == pytest.approx(r.metrics["test"]["balanced_accuracy"])


def test_views_are_validated(tmp_path, square_tree):
    with pytest.raises(InputError, match="--views should be between 0 and 64; received -1"):
        extract(build_index(square_tree), opts(tmp_path, views=-1))
