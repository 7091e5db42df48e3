"""The stand-in backbone: the real `extract` around a forward pass that only glances at the pixels, registered for
the time of a block and gone after."""

import time

import numpy as np
import pytest
from conftest import write_image

from bottleneck.backbones import REGISTRY, create_backbone
from bottleneck.bench.standin import STAND_IN, stand_in_backbone
from bottleneck.cache import load_cache
from bottleneck.extract import ExtractOptions, extract
from bottleneck.images import build_index, load_image
from bottleneck.util import tensorflow


def test_extract_runs_the_stand_in_and_stores_its_tiled_pooled_pixels(tmp_path):
    for i in range(6):
        write_image(tmp_path / "data" / ("a" if i % 2 else "b") / f"i{i}.jpg", seed=i, size=(64, 48))
    with stand_in_backbone(dim=8, size=32) as name:
        s = extract(build_index(tmp_path / "data"), ExtractOptions(
            backbone=name, weights="none", cache=tmp_path / "c.h5", progress=False, precision="float32", xla="off",
            dtype="float32", batch_size=4))
    assert s.extracted == 6 and s.failed == []
    data = load_cache(tmp_path / "c.h5")
    assert data.features.shape == (6, 8) and data.config.backbone == STAND_IN
    for row, rel in zip(data.features, data.paths):
        pixels, _ = load_image(tmp_path / "data" / rel, 32)
        pooled = pixels[::16, ::16].reshape(-1, 3).astype(np.float32).mean(axis=0)  # no preprocessing
        np.testing.assert_allclose(row, np.tile(pooled, 3)[:8], rtol=1e-5)
    assert STAND_IN not in REGISTRY
    import keras

    assert not any("BenchStandIn" in a for a in dir(keras.applications))


def test_the_emulated_forward_waits_its_rate_and_stand_ins_do_not_nest():
    tf = tensorflow()
    with stand_in_backbone(dim=4, size=32, images_per_s=200) as name:
        model = create_backbone(name, "none", 32)
        x = tf.zeros((8, 32, 32, 3))
        model(x)
        start = time.perf_counter()
        out = model(x)
        assert time.perf_counter() - start >= 8 / 200 and out.shape == (8, 4)
        with pytest.raises(RuntimeError, match="does not nest"):
            with stand_in_backbone():
                pass
    assert STAND_IN not in REGISTRY
