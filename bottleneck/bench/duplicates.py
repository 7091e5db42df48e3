"""How well the near-duplicate checks tell copies from distinct lesions, and what they cost: the measurement behind
`NEAR_BITS` and `NEAR_COSINE` (images/fingerprint.py).

Distinct synthetic dermoscopy photographs (bottleneck.synthetic, each lesion drawn and photographed once, as the
demo's) are copied the ways an uploader copies: JPEG re-encodes at quality 70-95, resizes of 50-200%, crops of a
few percent, mirror images and quarter turns. Each copy and each original is decoded as extraction decodes it
(to the backbone's input size) and fingerprinted. A copy is found when its fingerprint is within the threshold of
one of its original's flips and turns (`hamming_min`) and the closest one is its own original: the share not found
is the false-negative rate of each kind. Every pair of distinct originals measures the false positives: the share
of pairs within the threshold, and what that means for one image checked against 10,000 training images.
Feature cosine similarity is measured the same way on a backbone's features (`mobilenet_v2` at 96 px with the
weights given: with `none` the features are a random network's, which says little about ImageNet features; run
it with `--weights imagenet` or a weights file where they can be loaded). Speed: fingerprints per second, and
one check of 1,000 images against 100,000 fingerprints.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np

from ..images import (
    NEAR_BITS,
    NEAR_COSINE,
    decode_image,
    dihedral_variants,
    hamming,
    hamming_min,
    perceptual_hashes,
)

SIZE = 224  # the input size the fingerprints are taken at (extraction hashes the pixels it feeds the backbone)
THRESHOLDS = (2, 3, 4, 6, 8, 10, 12)
COSINES = (0.9, 0.95, 0.97, 0.99)
KINDS = ("jpeg q95", "jpeg q85", "jpeg q70", "resized 50%", "resized 75%", "resized 150%", "resized 200%",
         "cropped 3%", "cropped 6%", "cropped 10%", "mirrored", "turned 90", "turned 180, jpeg q85")


def _photos(n: int, seed: int) -> list:
    """n distinct lesion photographs (PIL images, 300x225), classes in turn."""
    from ..synthetic import lesion_photograph

    rng = np.random.default_rng(seed)
    return [lesion_photograph(rng, ("nv", "mel", "bcc")[i % 3], 300).resize((300, 225)) for i in range(n)]


def _encode(img, kind: str) -> bytes:
    """The bytes of a copy of `img` made the `kind` way (an original: PNG)."""
    from PIL import Image

    w, h = img.size
    fmt, quality = "PNG", None
    if kind.startswith("resized"):
        f = int(kind.split()[1][:-1]) / 100
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
    elif kind.startswith("cropped"):
        c = int(kind.split()[1][:-1]) / 100
        img = img.crop((round(w * c), round(h * c), w - round(w * c), h - round(h * c)))
    elif kind == "mirrored":
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif kind == "turned 90":
        img = img.transpose(Image.Transpose.ROTATE_90)
    elif kind.startswith("turned 180"):
        img = img.transpose(Image.Transpose.ROTATE_180)
    if "jpeg" in kind:
        fmt, quality = "JPEG", int(kind.rsplit("q", 1)[1])
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if quality else {}))
    return buf.getvalue()


def _pixels(data: list[bytes]) -> np.ndarray:
    """Each image's bytes written to a file and decoded from it as extraction does, at SIZE."""
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for i, b in enumerate(data):
            path = Path(tmp) / f"{i}.img"  # the decoder sniffs the format from the bytes, not the name
            path.write_bytes(b)
            out.append(decode_image(str(path), SIZE)[0])
    return np.stack(out)


def bench_duplicates(images: int = 150, seed: int = 0, weights: str = "none",
                     check: tuple[int, int] = (1000, 100_000)) -> dict:
    """False-negative rate per kind of copy and false-positive rate over distinct pairs, for fingerprints at each
    of THRESHOLDS and feature cosine at each of COSINES; fingerprint and check speeds."""
    photos = _photos(images, seed)
    originals = _pixels([_encode(p, "original") for p in photos])  # (n, S, S, 3)
    start = time.perf_counter()
    base = perceptual_hashes(originals)
    hash_s = (time.perf_counter() - start) / len(originals)
    copies = {kind: _pixels([_encode(p, kind) for p in photos]) for kind in KINDS}
    feats = _features(originals, copies, weights)
    kinds = {}
    for kind, px in copies.items():
        dist, which = hamming_min(perceptual_hashes(px), base)
        own = which == np.arange(images)
        row = {"found_bits": {t: float((own & (dist <= t)).mean()) for t in THRESHOLDS},
               "median_bits": float(np.median(dist)), "max_bits": int(dist.max())}
        if feats is not None:
            sim = (feats["copies"][kind] * feats["originals"]).sum(axis=1)  # its own original's cosine
            row["found_cosine"] = {c: float((sim >= c).mean()) for c in COSINES}
            row["min_cosine"] = float(sim.min())
        kinds[kind] = row
    iu = np.triu_indices(images, 1)
    pair_bits = hamming(base[:, None, None], dihedral_variants(base)[None, :, :]).min(axis=2)[iu]
    distinct = {"pairs": int(len(pair_bits)), "within_bits": {t: float((pair_bits <= t).mean()) for t in THRESHOLDS},
                "min_bits": int(pair_bits.min())}
    if feats is not None:
        pair_cos = (feats["originals"] @ feats["originals"].T)[iu]
        centred = (feats["centred"]["originals"] @ feats["centred"]["originals"].T)[iu]
        distinct |= {"above_cosine": {c: float((pair_cos >= c).mean()) for c in COSINES},
                     "max_cosine": float(pair_cos.max()), "max_centred_cosine": float(centred.max())}
    return {"images": images, "size": SIZE, "weights": weights, "near_bits": NEAR_BITS, "near_cosine": NEAR_COSINE,
            "kinds": kinds, "distinct": distinct, "hash_ms": hash_s * 1e3, "check": check,
            "check_s": _check_speed(seed, *check)}


def _features(originals: np.ndarray, copies: dict, weights: str) -> dict | None:
    """L2-normalised mobilenet_v2 features (96 px) of the originals and of each kind of copy; None where the
    backbone cannot be built with `weights` (said in the results)."""
    from ..backbones import create_backbone, get_spec
    from ..errors import BottleneckError
    from ..util import tensorflow

    try:
        model = create_backbone("mobilenet_v2", weights, 96)
    except BottleneckError:
        return None
    tf = tensorflow()
    preprocess = get_spec("mobilenet_v2").preprocess_fn()

    def embed(px):
        x = tf.image.resize(tf.constant(px, tf.float32), (96, 96))
        return model.predict(preprocess(x), batch_size=64, verbose=0).astype(np.float64)

    raw = {"originals": embed(originals), "copies": {k: embed(v) for k, v in copies.items()}}
    return {"originals": _unit(raw["originals"]), "copies": {k: _unit(v) for k, v in raw["copies"].items()},
            # centred on the originals' mean: features after a ReLU share a large common part that lifts every
            # raw cosine; measured beside the raw one, which the checks use
            "centred": {"originals": _unit(raw["originals"], raw["originals"].mean(axis=0))}}


def _unit(f: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    f = f if mean is None else f - mean
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _check_speed(seed: int, queries: int = 1000, rows: int = 100_000) -> float:
    """Seconds to check `queries` fingerprints against `rows` (every flip and turn of each)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, queries, dtype=np.uint64)
    b = rng.integers(1, 2**63, rows, dtype=np.uint64)
    start = time.perf_counter()
    hamming_min(a, b)
    return time.perf_counter() - start


def format_duplicates(d: dict) -> list[str]:
    ts, x = THRESHOLDS, d["distinct"]
    lines = [f"near-duplicates: {d['images']} distinct synthetic lesion photos, each copied {len(d['kinds'])} ways, "
             f"fingerprints at {d['size']} px (chosen: within {d['near_bits']} bits, or cosine >= "
             f"{d['near_cosine']}); share of copies found at <= " + "/".join(map(str, ts)) + " bits"
             + (", and at cosine >= " + "/".join(map(str, COSINES)) + f" ({d['weights']} weights)"
                if "found_cosine" in next(iter(d["kinds"].values())) else " (no features: backbone not built)")]
    for kind, r in d["kinds"].items():
        cos = (" | cosine " + " ".join(f"{r['found_cosine'][c]:.2f}" for c in COSINES) +
               f" (min {r['min_cosine']:.3f})") if "found_cosine" in r else ""
        lines.append(f"  {kind:22s} bits " + " ".join(f"{r['found_bits'][t]:.2f}" for t in ts)
                     + f" (median {r['median_bits']:.0f}, max {r['max_bits']}){cos}")
    lines.append(f"  distinct pairs ({x['pairs']}) within the bits: "
                 + " ".join(f"{x['within_bits'][t]:.4f}" for t in ts)
                 + f" (closest {x['min_bits']} bits)" + (" | above the cosines: " + " ".join(
                     f"{x['above_cosine'][c]:.4f}" for c in COSINES) + f" (highest {x['max_cosine']:.3f}; centred on "
                     f"their mean {x['max_centred_cosine']:.3f})"
                     if "above_cosine" in x else ""))
    q, n = d["check"]
    lines.append(f"  fingerprint {d['hash_ms']:.2f} ms per image; {q:,} checked against {n:,}: {d['check_s']:.1f} s")
    return lines
