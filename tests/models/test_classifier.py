"""The raw-image model of classifier.py: preprocessing as a layer, the backbone rebuilt from a cache's provenance
(weights file hash checked), the assembled model, and unfreezing that never moves BatchNorm statistics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bottleneck.backbones.registry import REGISTRY, get_spec, layer_groups
from bottleneck.cache.store import CacheConfig
from bottleneck.errors import InputError, WeightsError
from bottleneck.models.classifier import assemble_model, preprocess_layer, rebuild_backbone, unfreeze


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_preprocess_layer_is_preprocess_input(name):
    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = np.asarray(get_spec(name).preprocess_fn()(x.copy()))
    np.testing.assert_allclose(np.asarray(preprocess_layer(name)(x)), expected, atol=1e-4)


def test_a_weights_file_must_have_the_recorded_hash(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not the weights the cache was made with")
    cc = CacheConfig(backbone="vgg16", weights=str(weights), weights_sha256="ab" * 32, seed=0, input_size=32,
                     pooling="avg", preprocessing=get_spec("vgg16").preprocessing, dtype="float16", num_features=512)
    with pytest.raises(WeightsError, match="ab" * 32):
        rebuild_backbone(cc)
    with pytest.raises(WeightsError, match="missing"):
        rebuild_backbone(replace(cc, weights=str(tmp_path / "gone.h5")))


@pytest.mark.slow
def test_batchnorm_statistics_do_not_move(tmp_path):
    """mobilenet_v2 (weights none: this looks at variables, not features) with every group unfrozen."""
    import keras

    from bottleneck.heads.model import HeadConfig, build_head

    cc = CacheConfig(backbone="mobilenet_v2", weights="none", weights_sha256="", seed=0, input_size=32,
                     pooling="avg", preprocessing=get_spec("mobilenet_v2").preprocessing, dtype="float32",
                     num_features=1280)
    backbone = rebuild_backbone(cc)
    model = assemble_model(cc, build_head(1280, 3, HeadConfig(hidden=(4,), standardize=False)), backbone)
    info = unfreeze(backbone, "mobilenet_v2", "all")
    assert info["frozen_batchnorm_layers"] > 0
    # Eager steps: tracing a training step of the whole MobileNetV2 costs ~10 s, two eager steps under one; a layer's
    # trainable flag and inference mode are the same either way.
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", run_eagerly=True)
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    stats = [v.numpy().copy() for layer in bn for v in (layer.moving_mean, layer.moving_variance)]
    conv = backbone.get_layer("Conv1").kernel.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 3, epochs=2, batch_size=4, verbose=0)
    after = [v.numpy() for layer in bn for v in (layer.moving_mean, layer.moving_variance)]
    assert all(np.array_equal(a, b) for a, b in zip(stats, after))
    assert not np.array_equal(conv, backbone.get_layer("Conv1").kernel.numpy())  # the backbone did train


VGG = CacheConfig(backbone="vgg16", weights="none", weights_sha256="", seed=0, input_size=32, pooling="avg",
                  preprocessing=get_spec("vgg16").preprocessing, dtype="float16", num_features=512)


def test_a_cache_of_another_preprocessing_is_refused():
    with pytest.raises(WeightsError, match="records preprocessing 'tf' for vgg16 but this bottleneck applies 'caffe"):
        rebuild_backbone(replace(VGG, preprocessing="tf"))


def test_the_assembled_model_is_preprocessing_then_backbone_then_head():
    from bottleneck.heads.model import HeadConfig, build_head

    backbone = rebuild_backbone(VGG)
    head = build_head(512, 3, HeadConfig(hidden=(8,), standardize=False))
    model = assemble_model(VGG, head, backbone)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)  # raw RGB 0..255
    features = backbone.predict(get_spec("vgg16").preprocess_fn()(x.copy()), verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), head.predict(features, verbose=0), rtol=1e-4, atol=1e-6)


def test_unfreeze_trains_the_top_groups_and_nothing_below():
    backbone = rebuild_backbone(VGG)
    groups = layer_groups(backbone, get_spec("vgg16"))
    info = unfreeze(backbone, "vgg16", 2)
    assert (info["groups"], info["of"], info["frozen_batchnorm_layers"]) == (2, 5, 0)
    assert info["first_unfrozen_layer"] == groups[-2][0].name
    for i, group in enumerate(groups):
        assert all(layer.trainable == (i >= 3) for layer in group), i
    top = sum(int(np.prod(w.shape)) for group in groups[3:] for layer in group for w in layer.weights)
    assert info["trainable_weights"] == top > 0
    everything = rebuild_backbone(VGG)  # a fresh backbone each time: that is how fine-tune calls it
    info = unfreeze(everything, "vgg16", "all")
    assert info["groups"] == 5 and info["trainable_weights"] == everything.count_params()
    nothing = rebuild_backbone(VGG)
    assert unfreeze(nothing, "vgg16", 0)["trainable_weights"] == 0 and not nothing.trainable_weights
    with pytest.raises(InputError, match="--unfreeze 6 is more than the 5 layer groups of vgg16"):
        unfreeze(backbone, "vgg16", 6)


def test_unfreeze_again_sets_every_group():
    """A second call on the same backbone (more groups, then fewer) gives what the last call says."""
    backbone = rebuild_backbone(VGG)
    assert unfreeze(backbone, "vgg16", 2)["groups"] == 2
    info = unfreeze(backbone, "vgg16", "all")
    assert info["trainable_weights"] == backbone.count_params()
    info = unfreeze(backbone, "vgg16", 1)
    top = layer_groups(backbone, get_spec("vgg16"))[-1]
    assert info["trainable_weights"] == sum(int(np.prod(w.shape)) for layer in top for w in layer.weights) > 0
