"""Compute precision and XLA: what the backbone runs in, chosen from what this machine does natively.

    --precision auto -> the cache's recorded precision, else: float16 on a CUDA GPU, bfloat16 on a CPU with
                        native bf16 (AVX512-BF16 or AMX, read from /proc/cpuinfo), float32 otherwise
    --xla auto       -> the cache's recorded choice, else off (`--xla on` where `bench --part extract` measures it
                        faster on the machine at hand)

Reduced precision is Keras' mixed policy: variables stay float32 (so weights files load unchanged), the
backbone computes in bfloat16/float16, and its pooled features are cast back to float32. Heads and the
preprocessing layer always compute in float32.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import BottleneckWarning, InputError
from ..util import tensorflow

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
XLA_MODES = ("auto", "on", "off")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: the CPU multiplies bf16 natively (oneDNN uses it)
# Backbones whose forward pass XLA compiles faster on CPU (InceptionV3 at 299 px: +16% on an AMD EPYC
# family 25 and +7% on family 23). On ResNet50 it changed nothing and on VGG16 and the depthwise
# MobileNetV2/EfficientNet it was several times slower, so `auto` leaves it off there.
def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def has_gpu() -> bool:
    return bool(tensorflow().config.list_physical_devices("GPU"))


def fastest_native(gpu: bool | None = None, flags: frozenset[str] | None = None) -> str:
    if has_gpu() if gpu is None else gpu:
        return "float16"
    return "bfloat16" if native_bf16(flags) else "float32"


def check_precision(requested: str) -> str:
    if requested not in PRECISIONS:
        raise InputError(f"--precision should be one of {', '.join(PRECISIONS)}; received {requested!r}")
    return requested


def resolve_precision(requested: str, recorded: str | None = None, gpu: bool | None = None,
                      flags: frozenset[str] | None = None) -> str:
    """The precision to compute in; warns (once, one line) when it is emulated on this machine."""
    check_precision(requested)
    if requested == "auto":
        requested = recorded or fastest_native(gpu, flags)
    gpu = has_gpu() if gpu is None and requested != "float32" else gpu
    if requested == "bfloat16" and not gpu and not native_bf16(flags):
        warnings.warn("bfloat16 is emulated on this CPU (no avx512_bf16 or amx_bf16 flag), so it runs slower than "
                      "float32 here; --precision auto picks float32", BottleneckWarning, stacklevel=2)
    if requested == "float16" and not gpu:
        warnings.warn("float16 is emulated on a CPU and runs slower than float32; it is the fast choice on "
                      "CUDA GPUs only", BottleneckWarning, stacklevel=2)
    return requested


def resolve_xla(requested: str, backbone: str, precision: str, recorded: bool | None = None) -> bool:
    """`auto`: the cache's choice, else off. Whether XLA helps depends on the machine, not the backbone: float32
    InceptionV3 under XLA ran 0.78x as fast as without on a 2-core AVX512-BF16 EPYC, where another machine had
    measured it faster, and bfloat16 under XLA took twice as long on a CPU that emulates bf16. `bench --part
    extract` measures both ways on the machine at hand; `--xla on` takes the faster one."""
    if requested not in XLA_MODES:
        raise InputError(f"--xla should be one of {', '.join(XLA_MODES)}; received {requested!r}")
    if requested == "auto":
        return bool(recorded)
    return requested == "on"


@contextmanager
def compute_policy(precision: str):
    """Keras layers take the global dtype policy when they are built: set it only while a model is built."""
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    saved = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(POLICIES[precision])
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def model_precision(model) -> str:
    """The compute precision of a built backbone (its first layer with weights decides)."""
    for layer in model.layers:
        if layer.weights:
            return {"bfloat16": "bfloat16", "float16": "float16"}.get(layer.compute_dtype, "float32")
    return "float32"
