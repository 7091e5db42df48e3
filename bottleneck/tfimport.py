"""Import TensorFlow once, quietly: its C++ start-up lines (oneDNN notice, missing CUDA drivers on CPU
machines) are printed before any log level applies and read like errors to users."""

from __future__ import annotations

import os
import sys


def tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery prints its own notices; do it here
            # Each head of a sweep is a new model, so Keras' "retracing" advice is expected, not a problem.
            tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf
