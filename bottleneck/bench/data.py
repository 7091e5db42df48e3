"""The synthetic data `bottleneck bench` times: a features cache with HAM10000-like class imbalance, HAM-sized
JPEGs that cost what a real dermoscopy photo costs to decode, and cheap distinct rows to grow large caches with
(`BenchOptions` says how much of each). Seeded, so that two runs time the same data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import CacheConfig, CacheWriter
from ..errors import InputError


@dataclass(frozen=True)
class BenchOptions:
    rows: int = 10_000
    dim: int = 2048
    classes: int = 7
    epochs: int = 5
    backbone: str = "inception_v3"
    image_size: int | None = None
    images: int = 256  # extraction figures; steady state is timed after the first batch
    ceiling_images: int = 512  # the `ceiling` part's JPEGs: 15 steady batches of 32 per extraction
    batch_size: int = 32
    sweep_epochs: int = 3  # per configuration in the sweep benchmark (fixed: no early stopping)
    grow_rows: tuple[int, ...] = (100_000, 1_000_000)  # cache sizes the `grow` part adds 1% to
    coverage_sims: int = 1000  # simulated test splits per row of the `coverage` part
    writer_rows: int = 20_000  # rows the `writer` part writes, in batches of `batch_size`
    repeats: int = 3  # extractions of the `extract` part, each between two timings of the pure forward pass
    decode_images: int = 64  # HAM-sized JPEGs of the `decode` part
    large_images: int = 16  # ISIC-sized JPEGs of the `decode` part
    large_size: tuple[int, int] = (4000, 3000)  # their width x height
    seed: int = 0


def parse_sizes(text: str) -> tuple[int, ...]:
    """"100000,1000000" -> (100000, 1000000); each a positive integer."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise InputError(f"--grow-rows should be comma-separated positive row counts like 100000,1000000; "
                         f"received {text!r}")
    return sizes


def synthetic_features(rows: int, dim: int, classes: int, seed: int = 0):
    """HAM10000-like class imbalance (67% one class), groups of ~1.4 images, class-dependent means."""
    rng = np.random.default_rng(seed)
    shares = np.array([0.67, 0.11, 0.11, 0.05, 0.03, 0.015, 0.015])[:classes]
    shares = shares / shares.sum()
    y = rng.choice(classes, size=rows, p=shares)
    centers = rng.normal(0, 0.3, size=(classes, dim))
    x = np.abs(centers[y] + rng.normal(0, 1, size=(rows, dim))).astype(np.float16)  # (N, D) like ReLU features
    groups = np.array([f"L{i // 2 if i % 3 else i}" for i in range(rows)], dtype=object)
    return x, y, groups


def write_synthetic_cache(path: Path, opts: BenchOptions) -> Path:
    x, y, groups = synthetic_features(opts.rows, opts.dim, opts.classes, opts.seed)
    names = [f"class{c}" for c in range(opts.classes)]
    # input_size 1: no image is ever read; the smallest size a valid cache records
    config = CacheConfig(backbone="synthetic", weights="none", weights_sha256="", seed=opts.seed, input_size=1,
                         pooling="avg", preprocessing="none", dtype="float16", num_features=opts.dim)
    with CacheWriter(path, config, {"dataset": "bench"}, tuple(names)) as w:
        for start in range(0, opts.rows, 4096):
            sl = slice(start, start + 4096)
            w.write_batch([dict(image_id=f"b{i}", path=f"b{i}.jpg", label=names[y[i]], group=groups[i],
                                sha256=f"{i:064x}", width=600, height=450) for i in range(*sl.indices(opts.rows))],
                          x[sl])
    return path


def write_bench_images(folder: Path, n: int, seed: int = 0, start: int = 0) -> Path:
    """`n` HAM10000-sized (600 x 450) JPEGs in two class folders: smooth colour fields plus sensor-like noise at
    quality 90, so that decoding costs about what a real dermoscopy photo costs (a flat synthetic image decodes
    several times faster)."""
    from PIL import Image

    rng = np.random.default_rng(seed + start)
    for i in range(start, start + n):
        base = Image.fromarray(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)).resize((600, 450), Image.BICUBIC)
        pixels = np.asarray(base, np.float32) + rng.normal(0, 8, (450, 600, 3))
        path = folder / ("mel" if i % 2 else "nv") / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return folder


def write_large_images(folder: Path, n: int, size: tuple[int, int] = (4000, 3000), seed: int = 0) -> Path:
    """`n` ISIC-sized JPEGs (`size`, width x height): the smooth fields and noise of `write_bench_images`, made
    from one field rolled per image, so that writing 16 of 12 megapixels takes seconds, not minutes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    field = np.asarray(base, np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    field = np.clip(field, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.roll(field, (37 * i, 53 * i), axis=(0, 1))
        Image.fromarray(pixels).save(folder / f"large{i:04d}.jpg", quality=90)
    return folder


def synthetic_rows(start: int, n: int, dim: int):
    """Synthetic rows start..start+n-1 and their (n, dim) features: cheap to make, distinct per row."""
    rows = [dict(image_id=f"g{i:08d}", path=f"c{i % 7}/g{i:08d}.jpg", label=f"c{i % 7}", group=f"L{i // 2}",
                 sha256=f"{i:064x}", width=600, height=450) for i in range(start, start + n)]
    feats = np.broadcast_to(np.arange(start, start + n, dtype=np.float32)[:, None] % 1000 / 1000, (n, dim))
    return rows, feats
