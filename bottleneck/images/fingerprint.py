"""Perceptual fingerprints: a 64-bit hash of an image's decoded pixels that survives re-encoding and resizing, and
whose flips and rotations are known from the hash alone.

    pixels (H, W, 3) uint8 -> gray -> 32x32 box mean -> 2-D DCT-II -> the 8x8 lowest frequencies -> sign bits

Bit 8*u + v is set when the DCT coefficient of vertical frequency u and horizontal frequency v is positive (bit 0,
the mean brightness, is always 0). Signs rather than a median split: a horizontal flip multiplies the coefficient
(u, v) by (-1)^v, a vertical flip by (-1)^u and a transpose swaps u and v, so the hashes of all eight flips and
quarter turns of an image are bit operations on its own hash (`dihedral_variants`), and a copy that was flipped or
rotated is found without its pixels (`hamming_min`). Numpy and scipy only.
"""

from __future__ import annotations

import numpy as np

SIDE = 32  # the gray image the DCT is taken of
KEEP = 8  # the KEEP x KEEP lowest frequencies make the 64 bits
# What counts as a near-duplicate (set from `bottleneck bench --part duplicates`, docs/benchmarks.md): a
# perceptual hash within NEAR_BITS bits of one of the other image's flips and turns, or bottleneck features with a
# cosine similarity of at least NEAR_COSINE under the same backbone configuration.
NEAR_BITS = 3
NEAR_COSINE = 0.97
# Stored for a row without a fingerprint (an older cache's rows). A flat image (no contrast at all) hashes to 0 too:
# it is never matched either, rightly, since every flat image would match every other.
NO_FINGERPRINT = np.uint64(0)

_U, _V = np.divmod(np.arange(KEEP * KEEP), KEEP)  # (64,) the frequencies of each bit
_WEIGHTS = np.uint64(1) << np.arange(KEEP * KEEP, dtype=np.uint64)
_ODD_V = int(((_V % 2 == 1).astype(np.uint64) * _WEIGHTS).sum())  # bits a horizontal flip inverts
_ODD_U = int(((_U % 2 == 1).astype(np.uint64) * _WEIGHTS).sum())  # bits a vertical flip inverts
_TRANSPOSED = _V * KEEP + _U  # bit 8u+v of a transposed image is bit 8v+u of the original


def _dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II: row k is frequency k."""
    x = np.arange(n)
    m = np.cos(np.pi * (2 * x[None, :] + 1) * np.arange(n)[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(SIDE)[:KEEP]  # (KEEP, SIDE): only the low frequencies are ever needed


def _gray_32(pixels: np.ndarray) -> np.ndarray:
    """(SIDE, SIDE) float64 luma of (H, W, 3) uint8 pixels: Pillow's box filter, each output pixel the mean of the
    input area it covers (a mirror image gives the mirror of this)."""
    from PIL import Image

    rgb = np.asarray(pixels, dtype=np.float32)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114 if rgb.ndim == 3 else rgb
    small = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), "F").resize((SIDE, SIDE),
                                                                                       Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64)


def perceptual_hash(pixels: np.ndarray) -> np.uint64:
    """The 64-bit fingerprint of one decoded image, (H, W, 3) uint8 RGB (or (H, W) gray), at least 1x1."""
    coef = _DCT @ _gray_32(pixels) @ _DCT.T  # (KEEP, KEEP)
    bits = coef.reshape(-1) > 1e-6 * max(1.0, float(np.abs(coef).max()))  # float noise is not a sign
    bits[0] = False  # the mean brightness: always positive, carries nothing
    return np.uint64((bits.astype(np.uint64) * _WEIGHTS).sum())


def perceptual_hashes(batch: np.ndarray) -> np.ndarray:
    """(N,) uint64 fingerprints of a batch of decoded images (N, H, W, 3) uint8."""
    return np.array([perceptual_hash(x) for x in batch], dtype=np.uint64)


def _transpose_bits(h: np.ndarray) -> np.ndarray:
    bits = (h[:, None] >> np.arange(KEEP * KEEP, dtype=np.uint64)[None, :]) & np.uint64(1)  # (N, 64)
    return (bits[:, _TRANSPOSED] * _WEIGHTS[None, :]).sum(axis=1).astype(np.uint64)


def dihedral_variants(hashes) -> np.ndarray:
    """(N, 8) uint64: the fingerprints of each image's eight flips and quarter turns (column 0: as it is), from
    the hashes alone. Bit 0 stays 0 in every one."""
    h = np.atleast_1d(np.asarray(hashes, dtype=np.uint64))
    out = []
    for base in (h, _transpose_bits(h)):
        for mask in (0, _ODD_V, _ODD_U, _ODD_V ^ _ODD_U):  # both flips: (-1)^(u+v)
            out.append(base ^ np.uint64(mask))
    return np.stack(out, axis=1)


def hamming(a, b) -> np.ndarray:
    """Bits that differ between uint64 hashes, broadcast (an (N, 1) against (1, M) gives (N, M))."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def hamming_min(a, b, cells: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """For each hash of `a` (N,), the fewest bits it differs from any flip or quarter turn of any hash of `b` (M,),
    and the index in `b` of that closest one: ((N,) int, (N,) int; 65 and -1 when there is none). Rows of either
    side that are NO_FINGERPRINT are never matched.

    The eight variants of each hash of `a` are compared with `b` as it is: a variant is a bit permutation and
    flip, which keeps the distance between two hashes when applied to both, so the minimum is the same as over the
    variants of `b`. Blocks of about `cells` pairs, counted in uint8: 1,000 x 100,000 in about a second."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    dist = np.full(len(a), KEEP * KEEP + 1, dtype=np.int64)
    where = np.full(len(a), -1, dtype=np.int64)
    keep_a, keep_b = np.flatnonzero(a != NO_FINGERPRINT), np.flatnonzero(b != NO_FINGERPRINT)
    if not len(keep_a) or not len(keep_b):
        return dist, where
    variants, theirs = dihedral_variants(a[keep_a]), b[keep_b]  # (n, 8), (m,)
    block = max(1, cells // len(theirs))
    for start in range(0, len(keep_a), block):
        part = variants[start:start + block]
        best = np.bitwise_count(part[:, :1] ^ theirs[None, :])  # (rows, m) uint8
        for j in range(1, part.shape[1]):
            np.minimum(best, np.bitwise_count(part[:, j:j + 1] ^ theirs[None, :]), out=best)
        k = best.argmin(axis=1)
        dist[keep_a[start:start + block]] = best[np.arange(len(part)), k]
        where[keep_a[start:start + block]] = keep_b[k]
    return dist, where
