"""A stand-in backbone for the ceiling figures: the real `extract` around a forward pass that costs nothing, or one
that takes a fixed time per image without using a core (a GPU's rate, emulated on a CPU machine).

    (B, S, S, 3) float pixels -> average (or max) over every 16th row and column: (B, 3) -> tiled to (B, D)
                              -> [a sleep of B / images_per_s seconds, outside the GIL and off every core]

Registering it: `extract` builds its backbone through the registry (`create_backbone` looks the name up in
`REGISTRY` and builds `keras.applications.<builder>`), and it has no other seam. So `stand_in_backbone` adds one
entry to the registry and one builder to `keras.applications` for the time of the block, and removes both after:
the only place in the package that patches anything, and only in `bench`, never in tests of other parts. A seam in
`extract` itself (a model factory in `ExtractOptions`) would make this unnecessary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager

import numpy as np

from ..backbones import REGISTRY
from ..util import tensorflow

STAND_IN = "bench_stand_in"
_BUILDER = "BottleneckBenchStandIn"


def _stand_in_layer(dim: int, pooling: str, images_per_s: float | None):
    """A Keras layer that pools, tiles to `dim` and, with `images_per_s`, waits B / images_per_s seconds."""
    tf = tensorflow()
    import keras

    def wait(n):
        time.sleep(int(n) / images_per_s)  # releases the GIL: decoding threads go on meanwhile
        return np.float32(0.0)

    class StandIn(keras.layers.Layer):
        def call(self, x):
            x = x[:, ::16, ::16, :]  # a glance, not a pass: the pixels' full size would cost a CPU what a GPU hides
            pooled = tf.reduce_mean(x, axis=(1, 2)) if pooling == "avg" else tf.reduce_max(x, axis=(1, 2))
            out = tf.tile(pooled, (1, math.ceil(dim / 3)))[:, :dim]
            if images_per_s:
                waited = tf.numpy_function(wait, [tf.shape(x)[0]], tf.float32, stateful=True)
                waited.set_shape(())
                out = out + tf.cast(waited, out.dtype)  # the output depends on the wait: never pruned or reordered
            return out

        def compute_output_shape(self, input_shape):
            return (input_shape[0], dim)

    return StandIn(name="stand_in")


@contextmanager
def stand_in_backbone(dim: int = 2048, size: int = 299, images_per_s: float | None = None):
    """For the time of the block, `extract(..., ExtractOptions(backbone=STAND_IN, weights="none", ...))` runs the
    stand-in: D = `dim` features per image at `size` px, `images_per_s` (None: no wait) as its forward rate, and
    no preprocessing (EfficientNet's `preprocess_input`, the identity: an elementwise pass over every pixel costs a
    CPU tens of ms a batch, which a GPU does in its forward pass). Yields the backbone's name."""
    tensorflow()
    import keras

    def build(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg"):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, _stand_in_layer(dim, pooling, images_per_s)(inputs), name=STAND_IN)

    if STAND_IN in REGISTRY:
        raise RuntimeError("stand_in_backbone is already active; it does not nest")
    spec = dataclasses.replace(REGISTRY["efficientnet_b0"], name=STAND_IN, builder=_BUILDER, input_size=size,
                               num_features=dim, preprocessing="none (bench stand-in)", min_size=1)
    REGISTRY[STAND_IN] = spec
    setattr(keras.applications, _BUILDER, build)
    try:
        yield STAND_IN
    finally:
        del REGISTRY[STAND_IN]
        delattr(keras.applications, _BUILDER)
