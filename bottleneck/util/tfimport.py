"""Import TensorFlow once, quietly: its C++ start-up lines (oneDNN notice, missing CUDA drivers on CPU
machines, absl's "All log messages before absl::InitializeLog()") are printed before any log level applies and
read like errors to users. `bottleneck --verbose` (or BOTTLENECK_VERBOSE=1) shows them all, for bug reports.
`native_stderr_quiet()` does the same around later native calls that print at the user (TensorFlow Lite's
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


def verbose() -> bool:
    return os.environ.get("BOTTLENECK_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose():
        import tensorflow as tf

        return tf
    # Forced, not a default: a TF_CPP_MIN_LOG_LEVEL left at 0 in a shell would let the lines TensorFlow logs after
    # start-up (device creation, XLA, cuDNN) through; --verbose is the way to see them.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with native_stderr_quiet():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery prints its own notices; do it here
        # Each head of a sweep is a new model, so Keras' "retracing" advice is expected, not a problem.
        tf.get_logger().setLevel("ERROR")
        try:  # absl's Python logger (Keras' saving notes); absl-py comes with TensorFlow
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:
            pass
    return tf


@contextmanager
def native_stderr_quiet():
    """File descriptor 2 sent to /dev/null for the block (unless --verbose): C++ code writes there directly, past
    Python's sys.stderr and any log level. Python's own warnings in the block are lost too: keep the block to the
    native call."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
