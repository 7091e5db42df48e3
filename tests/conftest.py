"""Shared fixtures: small real image trees written with Pillow, tiny backbones with weights=None."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from PIL import Image

# Small and cheap: vgg16 at 32 px builds in a second, runs hundreds of images/s on 2 cores, and its
# random-init features are O(0.1) (mobilenet_v2 and efficientnet ones are ~1e-12, below float16).
TINY = dict(backbone="vgg16", weights="none", image_size=32)


def write_image(path, seed: int, size=(40, 30), fmt: str | None = None, mode: str = "RGB"):
    """A real image file whose pixels depend on seed (so files differ and SHA-256s differ)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = (base[None, None, :] + 60 * np.sin((xx[..., None] + seed) / (3 + seed % 5))
           + 40 * np.cos(yy[..., None] / 4.0)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None))
    return path


@pytest.fixture
def class_tree(tmp_path):
    """DATA/<class>/*: 3 classes x 4 images, mixed JPEG and PNG, one class name with a space."""
    root = tmp_path / "data"
    k = 0
    for cls in ("bcc", "mel", "nevus benign"):
        for i in range(4):
            ext = ".jpg" if i % 2 == 0 else ".png"
            write_image(root / cls / f"img{i}{ext}", seed=k)
            k += 1
    return root


def make_ham(root, n_lesions=6, images_per_lesion=2, crlf=False, bom=False, extra_rows=(), extra_images=()):
    """A HAM10000-style folder: HAM10000_metadata.csv + HAM10000_images_part_1/ and _part_2/."""
    classes = ("mel", "nv", "bkl")
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    k = 0
    for les in range(n_lesions):
        for j in range(images_per_lesion):
            image_id = f"ISIC_{k:07d}"
            part = 1 if k % 2 == 0 else 2
            write_image(root / f"HAM10000_images_part_{part}" / f"{image_id}.jpg", seed=100 + k)
            lines.append(f"HAM_{les:07d},{image_id},{classes[les % 3]},histo,50.0,male,back")
            k += 1
    lines.extend(extra_rows)
    for name in extra_images:
        write_image(root / "HAM10000_images_part_1" / name, seed=999)
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    (root / "HAM10000_metadata.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return root


def feature_cache(path, counts=None, dim=32, images_per_group=2, seed=0, backbone="vgg16", separation=1.5,
                  class_names=None):
    """A real cache written through the library's writer, with synthetic class-dependent features:
    train-head tests need no CNN pass. counts: {class name: images}; groups of `images_per_group`."""
    from bottleneck.cache import CacheConfig
    from bottleneck.cache_write import CacheWriter

    counts = {"bcc": 60, "mel": 60, "nv": 120} if counts is None else counts
    rng = np.random.default_rng(seed)
    config = CacheConfig(backbone=backbone, weights="none", weights_sha256="", seed=0, input_size=32,
                         pooling="avg", preprocessing="test", dtype="float16", num_features=dim)
    centers = rng.normal(0, separation, size=(len(counts), dim))
    rows, feats, k = [], [], 0
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            group = f"L{c}-{i // images_per_group}" if images_per_group else ""
            rows.append(dict(image_id=f"img{k:05d}", path=f"{name}/img{k:05d}.jpg", label=name, group=group,
                             sha256=f"{k:064x}", width=40, height=30))
            feats.append(centers[c] + rng.normal(0, 1, dim))
            k += 1
    with CacheWriter(path, config, {"dataset": "synthetic"}, tuple(class_names or sorted(counts))) as w:
        w.write_batch(rows, np.array(feats, dtype=np.float32))
    return path
