"""The limits a bench rate is compared with: the decode ceiling, and FLOPs of a forward pass counted layer by layer."""

import pytest


def test_the_decode_ceiling_shares_cores_on_a_cpu_and_bounds_a_gpu():
    from bottleneck.bench.ceilings import decode_ceiling

    assert decode_ceiling(10, 190, gpu=False) == pytest.approx(0.95)  # decode steals 5% of the cores
    assert decode_ceiling(1000, 600, gpu=True) == pytest.approx(0.6)  # a GPU waits for the decoders
    assert decode_ceiling(100, 600, gpu=True) == 1.0


def test_forward_flops_count_convolutions_and_dense_layers_of_a_real_model():
    from bottleneck.bench.ceilings import forward_flops
    from bottleneck.util import tensorflow

    tensorflow()
    import keras

    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(5, 3, padding="same")(inputs)  # 8 x 8 x 5 outputs, 3 x 3 x 2 multiply-adds each
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 8 x 8 x 5 outputs, 3 x 3 each
    x = keras.layers.GlobalAveragePooling2D()(x)  # not counted
    outputs = keras.layers.Dense(4)(x)  # 5 x 4
    model = keras.Model(inputs, outputs)
    assert forward_flops(model) == 2 * (8 * 8 * 5 * 3 * 3 * 2 + 8 * 8 * 5 * 3 * 3 + 5 * 4)
