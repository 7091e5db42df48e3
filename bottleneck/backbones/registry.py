"""The backbone registry: one `BackboneSpec` per pretrained CNN, built through `create_backbone`.

Every fact about an architecture (its Keras builder, input size, preprocessing, feature width and the
layer groups fine-tuning may unfreeze) lives in one entry here; the rest of the package derives from it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, WeightsError
from ..util import sha256_file, tensorflow
from .precision import compute_policy

POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: str  # attribute of keras.applications, e.g. "InceptionV3"
    module: str  # keras.applications submodule holding preprocess_input
    input_size: int  # default square input side in pixels
    num_features: int  # width of the pooled bottleneck vector
    preprocessing: str  # what preprocess_input does, recorded in the cache
    # Regex whose first capture names a layer group; a run of layers ending at matches with the same
    # capture is one group, unmatched layers join the next group (the stem joins the first block).
    group_pattern: str
    min_size: int = 32

    def preprocess_fn(self) -> Callable:
        """`preprocess_input` of the architecture: raw RGB floats in 0..255 -> what the network expects."""
        tensorflow()
        import keras

        return getattr(keras.applications, self.module).preprocess_input


_SPECS = [
    BackboneSpec("inception_v3", "InceptionV3", "inception_v3", 299, 2048, "tf: x/127.5 - 1", r"^(mixed\d+)$", 75),
    BackboneSpec("resnet50", "ResNet50", "resnet", 224, 2048, "caffe: RGB->BGR, minus ImageNet mean",
                 r"^(conv\d)_block\d+_out$"),
    BackboneSpec("resnet152", "ResNet152", "resnet", 224, 2048, "caffe: RGB->BGR, minus ImageNet mean",
                 r"^(conv\d)_block\d+_out$"),
    BackboneSpec("vgg16", "VGG16", "vgg16", 224, 512, "caffe: RGB->BGR, minus ImageNet mean", r"^(block\d)_pool$"),
    BackboneSpec("efficientnet_b0", "EfficientNetB0", "efficientnet", 224, 1280,
                 "none outside the model: rescaling and normalisation are layers of EfficientNet", r"^(block\d)"),
    BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 1280, "tf: x/127.5 - 1", r"^(block_\d+)_"),
]
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}
DEFAULT_BACKBONE = "inception_v3"


def list_backbones() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}") from None


@dataclass(frozen=True)
class WeightsRef:
    """Where backbone weights come from: "imagenet", "none" (seeded random init) or a local file."""

    kind: str  # "imagenet" | "none" | "file"
    path: str = ""
    sha256: str = ""

    @property
    def label(self) -> str:
        return self.path if self.kind == "file" else self.kind

    @property
    def tag(self) -> str:
        """Short, file-name friendly identity used in default cache names."""
        return f"file-{self.sha256[:8]}" if self.kind == "file" else self.kind

    def identity(self, seed: int) -> str:
        """What must match for two caches to hold comparable features."""
        if self.kind == "file":
            return f"file sha256={self.sha256}"
        if self.kind == "none":
            return f"none (seed {seed})"
        return "imagenet"


def parse_weights(value: str) -> WeightsRef:
    """Validate `--weights` first and echo the bad value, as Keras does."""
    low = value.strip().lower()
    if low in ("imagenet", "none"):
        return WeightsRef(low)
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights should be 'imagenet', 'none' or the path to a weights file; received {value!r} "
            "(no such file)")
    return WeightsRef("file", str(path.resolve()), sha256_file(path))


def resolve_size(spec: BackboneSpec, image_size: int | None) -> int:
    size = spec.input_size if image_size is None else int(image_size)
    if size < spec.min_size:
        raise InputError(f"--image-size {size} is too small for {spec.name}; use at least {spec.min_size}")
    return size


def create_backbone(name: str, weights: WeightsRef | str = "imagenet", image_size: int | None = None,
                    pooling: str = "avg", seed: int = 0, precision: str = "float32"):
    """Build `name` truncated at its global pooling layer: (B, S, S, 3) preprocessed -> (B, num_features),
    computing in `precision` (see precision.py; its output is then bfloat16/float16 too).

    Weights are never silently replaced: if ImageNet weights cannot be downloaded, or a weights file
    does not fit, a `WeightsError` says so and names the alternatives.
    """
    tensorflow()
    import keras

    spec = get_spec(name)
    ref = parse_weights(weights) if isinstance(weights, str) else weights
    if pooling not in POOLINGS:
        raise InputError(f"--pooling should be one of {', '.join(POOLINGS)}; received {pooling!r}")
    size = resolve_size(spec, image_size)
    build = getattr(keras.applications, spec.builder)
    # Seeding before construction makes `--weights none` a fixed function of the seed, so a resumed or
    # incremental extraction computes the same features as the first run.
    keras.utils.set_random_seed(seed)
    with compute_policy(precision):
        model = _construct(build, name, ref, size, pooling)
    model.trainable = False
    return model


def _construct(build, name: str, ref: WeightsRef, size: int, pooling: str):
    kwargs = dict(include_top=False, input_shape=(size, size, 3), pooling=pooling)
    if ref.kind == "imagenet":
        try:
            model = build(weights="imagenet", **kwargs)
        except Exception as exc:  # noqa: BLE001 -- the download raises many types (URL, SSL, HTTP, OSError)
            raise WeightsError(
                f"could not obtain ImageNet weights for {name} ({type(exc).__name__}: {exc}); this machine may be "
                "offline. Pass --weights PATH to a local weights file (e.g. Keras' *_notop.h5 for this backbone) "
                "or --weights none for random initialisation") from None
    else:
        model = build(weights=None, **kwargs)
        if ref.kind == "file":
            try:
                # Keras only warns when part of a file does not match and keeps those layers random;
                # a partly random backbone is exactly the silent fallback we refuse, so warnings are errors.
                with warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)
                    model.load_weights(ref.path)
            except (ValueError, OSError, KeyError, UserWarning) as exc:
                raise WeightsError(
                    f"weights file {ref.path} does not fit {name} at {size}px with include_top=False "
                    f"({exc}); pass a weights file saved from this backbone, or --weights none") from None
    return model


def layer_groups(model, spec: BackboneSpec) -> list[list]:
    """Split the backbone's layers into ordered groups (bottom to top) for `fine-tune --unfreeze N`."""
    pattern = re.compile(spec.group_pattern)
    groups: list[list] = []
    pending: list = []
    last_key = None
    for layer in model.layers:
        pending.append(layer)
        m = pattern.match(layer.name)
        if m:
            key = m.group(1)
            if groups and key == last_key:
                groups[-1].extend(pending)
            else:
                groups.append(pending)
            pending, last_key = [], key
    if pending:
        if groups:
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    return groups
