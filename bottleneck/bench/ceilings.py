"""The limits a measured rate is compared with: the forward pass's FLOPs per image, this machine's matrix-product
FLOP/s (what a convolution lowers to), and the share of the pure forward rate that decoding leaves to `extract`."""

from __future__ import annotations

import time

from ..util import tensorflow


def forward_flops(model) -> float:
    """Multiply-adds x 2 of one image through `model`'s convolutions and dense layers (the rest is noise)."""
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out = layer.output.shape  # (None, H, W, C) or (None, C)
        kernel = layer.weights[0].shape  # (kh, kw, cin, cout), (kh, kw, cin, mult) or (in, out)
        if kind == "Dense":
            total += 2.0 * kernel[0] * kernel[1]
        elif kind == "DepthwiseConv2D":
            total += 2.0 * out[1] * out[2] * out[3] * kernel[0] * kernel[1]
        else:
            total += 2.0 * out[1] * out[2] * out[3] * kernel[0] * kernel[1] * kernel[2]
    return total


def matmul_flops_per_s(precision: str, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an n x n matrix product in `precision` on this machine: the ceiling a convolution lowers to."""
    tf = tensorflow()
    dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}[precision]
    a = tf.random.stateless_normal((n, n), (1, 2), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


def decode_ceiling(forward: float, decode: float, gpu: bool) -> float:
    """The most `extract` could reach, as a fraction of the pure forward rate: on a GPU decoding runs beside the
    forward pass and bounds it when slower; on a CPU it takes time from the same cores."""
    return min(1.0, decode / forward) if gpu else 1 / (1 + forward / decode)
