"""The registry is the test matrix: every backbone honours the same contract with weights=None."""

import socket

import numpy as np
import pytest

from bottleneck.backbones.registry import (
    REGISTRY,
    create_backbone,
    get_spec,
    layer_groups,
    list_backbones,
    parse_weights,
)
from bottleneck.errors import InputError, WeightsError


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.slow
def test_every_backbone_honours_the_contract(name):
    spec = get_spec(name)
    size = max(spec.min_size, 32)
    model = create_backbone(name, "none", size, "avg", seed=0)
    assert model.output_shape == (None, spec.num_features)
    assert not model.trainable
    x = spec.preprocess_fn()(np.full((1, size, size, 3), 128.0, np.float32))
    # Called eagerly: predict would trace the whole network first (4 s for resnet152), for the same output.
    assert np.asarray(model(x, training=False)).shape == (1, spec.num_features)
    groups = layer_groups(model, spec)
    assert len(groups) >= 4  # enough to unfreeze the top blocks one at a time
    assert sum(len(g) for g in groups) == len(model.layers)  # every layer in exactly one group
    assert groups[-1][-1] is model.layers[-1]


def test_required_backbones_are_registered():
    assert {"inception_v3", "resnet50", "resnet152", "vgg16", "efficientnet_b0", "mobilenet_v2"} <= set(REGISTRY)
    assert (get_spec("inception_v3").input_size, get_spec("inception_v3").num_features) == (299, 2048)
    assert get_spec("vgg16").num_features == 512


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown backbone 'resnet9'.*inception_v3"):
        get_spec("resnet9")


def test_seeded_random_init_is_reproducible():
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    a = create_backbone("vgg16", "none", 32, seed=7).predict(x, verbose=0)
    b = create_backbone("vgg16", "none", 32, seed=7).predict(x, verbose=0)
    c = create_backbone("vgg16", "none", 32, seed=8).predict(x, verbose=0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_weights_argument_is_validated_first(tmp_path):
    with pytest.raises(WeightsError, match=r"'imagenet', 'none' or the path.*received 'imagenett'"):
        parse_weights("imagenett")
    bad = tmp_path / "other.weights.h5"
    create_backbone("vgg16", "none", 32).save_weights(bad)
    with pytest.raises(WeightsError, match="does not fit mobilenet_v2"):
        create_backbone("mobilenet_v2", str(bad), 32)


def test_offline_imagenet_fails_loudly_and_names_the_alternatives(tmp_path, monkeypatch):
    """No silent fallback to random weights: the real Keras download path, with the network cut."""
    import keras.src.backend.config as kconfig

    monkeypatch.setattr(kconfig, "_KERAS_DIR", str(tmp_path))  # nothing cached from an earlier download

    def offline(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(WeightsError, match=r"could not obtain ImageNet weights.*--weights PATH.*--weights none"):
        create_backbone("vgg16", "imagenet", 32)
