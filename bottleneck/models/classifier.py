"""One model from raw images to class probabilities: the backbone rebuilt from a cache's provenance, the
preprocessing as a layer, and a run's head on top. Fine-tune trains it; predict and export serve it.

    raw RGB (B, S, S, 3) float 0..255 -> preprocess layer -> backbone(training=False) (B, D) -> head -> (B, C)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backbones import POLICIES, compute_policy, create_backbone, get_spec, layer_groups, model_precision
from ..cache import CacheConfig
from ..errors import InputError, WeightsError
from ..heads import keras_head
from ..images import DIHEDRAL, apply_view, inference_batches, pad_batch
from ..util import progress_bar, sha256_file, tensorflow

DIHEDRAL_VIEWS = DIHEDRAL + 1  # identity plus the 7 stored-view transforms of views.py


def rebuild_backbone(config: CacheConfig, precision: str = "float32"):
    """The backbone exactly as the cache recorded it, computing in `precision`; a weights file must still have
    the recorded SHA-256."""
    spec = get_spec(config.backbone)
    if config.preprocessing != spec.preprocessing:
        raise WeightsError(f"the cache records preprocessing {config.preprocessing!r} for {spec.name} but this "
                           f"bottleneck applies {spec.preprocessing!r}; re-extract the cache with this version")
    if config.weights not in ("imagenet", "none"):
        path = Path(config.weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} recorded in the cache provenance is missing; put the same "
                               "file back at that path")
        sha = sha256_file(path)
        if sha != config.weights_sha256:
            raise WeightsError(f"weights file {path} has sha256 {sha} but the cache was extracted with sha256 "
                               f"{config.weights_sha256}; restore the original file or re-extract the cache")
    return create_backbone(spec.name, config.weights, config.input_size, config.pooling, config.seed, precision)


def preprocess_layer(backbone: str):
    """`preprocess_input` of the backbone as a frozen built-in Dense(3) applied per pixel.

    Every registered preprocessing (caffe: RGB->BGR minus the ImageNet mean; tf: x/127.5 - 1; EfficientNet:
    identity) is affine per pixel, so a 3x3 kernel plus bias reproduces it exactly, and the saved model needs no
    custom code to load (Keras, SavedModel, TFLite). The affine map is measured from `preprocess_input` itself
    and checked on random pixels, so it cannot drift from what extraction used."""
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    fn = get_spec(backbone).preprocess_fn()
    probe = np.concatenate([np.zeros((1, 3)), 255 * np.eye(3)]).astype(np.float32).reshape(4, 1, 1, 3)
    out = np.asarray(fn(probe.copy()), np.float64).reshape(4, 3)  # copy: preprocess_input works in place
    bias, kernel = out[0], (out[1:] - out[0]) / 255  # kernel[i, j]: input channel i -> output channel j
    x = np.random.default_rng(0).uniform(0, 255, (64, 1, 1, 3)).astype(np.float32)
    if not np.allclose(x.reshape(-1, 3) @ kernel + bias, np.asarray(fn(x.copy())).reshape(-1, 3), atol=1e-3):
        raise WeightsError(f"preprocess_input of {backbone} is not affine per pixel; it needs its own layer "
                           "before fine-tune/export can embed it")
    layer = keras.layers.Dense(3, name="preprocess", trainable=False, dtype="float32")
    layer.build((None, 3))
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return layer


def assemble_model(config: CacheConfig, head, backbone=None):
    """raw RGB (B, S, S, 3) float 0..255 -> probabilities (B, C): preprocessing, backbone and head in one model.
    `head`: a Keras model or a DenseHead (`load_run`'s, converted with its weights as they are)."""
    tensorflow()
    import keras

    head = keras_head(head)
    backbone = backbone if backbone is not None else rebuild_backbone(config)
    size = config.input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess_layer(config.backbone)(inputs)  # (B, S, S, 3) what the backbone expects
    # training=False documents the intent; on its own it does not protect BN statistics in Keras 3 (fit's
    # training=True overrides the recorded argument of nested models), so `unfreeze` also freezes every BN layer.
    feats = backbone(x, training=False)  # (B, D)
    return keras.Model(inputs, head(feats), name=f"{config.backbone}_classifier")


def set_precision(model, precision: str, required: bool = True):
    """(`model` with its backbone computing in `precision`, the precision it computes in). `model` itself when it
    already does; a model not assembled by `assemble_model` is served as saved ("as saved") unless `required`.
    The weights are copied, so the two differ by the precision only; the preprocessing layer and head stay float32."""
    tensorflow()
    import keras

    names = [layer.name for layer in model.layers]
    if names[:2] + names[3:] != ["image", "preprocess", "head"]:  # a model from elsewhere
        if required and precision != "float32":
            raise InputError(f"model {model.name} is not one assembled by bottleneck (image, preprocess, backbone, "
                             f"head), so it cannot be run in {precision}; pass --precision float32")
        return model, "as saved"
    image, preprocess, backbone, head = model.layers
    if model_precision(backbone) == precision:
        return model, precision

    def with_policy(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": POLICIES[precision]})

    with compute_policy(precision):
        clone = keras.models.clone_model(backbone, clone_function=with_policy)
    clone.set_weights(backbone.get_weights())
    clone.trainable = False
    inputs = keras.Input(model.input_shape[1:], name=image.name)
    return keras.Model(inputs, head(clone(preprocess(inputs), training=False)), name=model.name), precision


def unfreeze(backbone, name: str, n: int | str) -> dict:
    """Train the top `n` layer groups of the backbone; freeze the rest and every BatchNormalization layer.

    A BN layer with trainable=False runs in inference mode in Keras 3: its moving statistics (ImageNet's) are
    used and never updated by small, class-skewed fine-tuning batches (the known InceptionV3/ResNet failure)."""
    tensorflow()
    import keras

    groups = layer_groups(backbone, get_spec(name))
    k = len(groups) if n == "all" else int(n)
    if k > len(groups):
        raise InputError(f"--unfreeze {k} is more than the {len(groups)} layer groups of {name}; "
                         f"pass at most {len(groups)} or 'all'")
    backbone.trainable = True
    for i, group in enumerate(groups):  # every layer set, so a second call on the same backbone also holds
        for layer in group:
            layer.trainable = i >= len(groups) - k
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn:
        layer.trainable = False
    top = groups[len(groups) - k:]
    return {"groups": k, "of": len(groups), "frozen_batchnorm_layers": len(bn),
            "first_unfrozen_layer": top[0][0].name if top else None,
            "trainable_weights": int(sum(np.prod(w.shape) for w in backbone.trainable_weights))}


def predict_images(model, paths: list[str], size: int, batch_size: int = 32, tta: bool = False,
                   progress: bool = False, desc: str = "predict"):
    """Probabilities (N, C) float64 (NaN rows where an image failed) and the reasons ("" when decoded).

    tta: mean over the 8 dihedral views (identity, 3 rotations, their mirrors), as the cache's views 1-7.
    progress: a progress bar over the images (util/progress.py), named `desc`, with images/s."""
    tf = tensorflow()

    @tf.function(reduce_retracing=True)
    def infer(x):  # (B, S, S, 3) uint8 -> (B, C)
        x = tf.cast(x, tf.float32)
        if not tta:
            return model(x, training=False)
        views = tf.concat([x] + [apply_view(x, k) for k in range(1, DIHEDRAL_VIEWS)], axis=0)
        p = model(views, training=False)
        return tf.reduce_mean(tf.reshape(p, (DIHEDRAL_VIEWS, -1, p.shape[-1])), axis=0)

    out, errors = [], []
    bar = progress_bar(total=len(paths), desc=desc, unit="img", enabled=progress)
    for pixels, _, _, err in inference_batches(paths, size, batch_size):
        n = int(pixels.shape[0])
        out.append(np.asarray(infer(pad_batch(pixels, batch_size)), np.float64)[:n])
        errors.extend(e.decode() for e in err.numpy())
        bar.update(n)
    bar.close()
    proba = np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])))
    proba = proba / proba.sum(axis=1, keepdims=True)
    proba[[bool(e) for e in errors]] = np.nan
    return proba, errors
