"""Perceptual fingerprints of real image files: copies that a checksum misses are close, distinct lesions are not,
and every flip and quarter turn is known from the hash alone."""

import numpy as np
import pytest
from PIL import Image

from bottleneck.images import (
    NEAR_BITS,
    NO_FINGERPRINT,
    dihedral_variants,
    hamming,
    hamming_min,
    load_image,
    perceptual_hash,
)
from bottleneck.synthetic import lesion_photograph


def lesion_photo(seed: int, dx: str = "nv", side: int = 200) -> Image.Image:
    return lesion_photograph(np.random.default_rng(seed), dx, side)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp")
    paths = []
    for i in range(12):
        path = folder / f"orig{i}.png"
        lesion_photo(i, ("nv", "mel", "bcc")[i % 3]).save(path)
        paths.append(path)
    return paths


def _hash_file(path) -> np.uint64:
    return perceptual_hash(load_image(path, 64)[0])  # as extraction sees it: decoded, resized to the input size


COPIES = {
    "jpeg q70": lambda im, p: im.save(p.with_suffix(".jpg"), quality=70) or p.with_suffix(".jpg"),
    "jpeg q95": lambda im, p: im.save(p.with_suffix(".jpg"), quality=95) or p.with_suffix(".jpg"),
    "resized 50%": lambda im, p: im.resize((100, 100), Image.Resampling.BICUBIC).save(p) or p,
    "resized 200%": lambda im, p: im.resize((400, 400), Image.Resampling.BICUBIC).save(p) or p,
    "mirrored": lambda im, p: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p) or p,
    "turned 90": lambda im, p: im.transpose(Image.Transpose.ROTATE_90).save(p) or p,
    "turned 180, jpeg q85": lambda im, p: (im.transpose(Image.Transpose.ROTATE_180).save(p.with_suffix(".jpg"),
                                                                                          quality=85)
                                           or p.with_suffix(".jpg")),
}


@pytest.mark.parametrize("kind", list(COPIES))
def test_each_kind_of_copy_is_found_near_its_original(originals, tmp_path, kind):
    hashes = np.array([_hash_file(p) for p in originals], dtype=np.uint64)
    copies = [COPIES[kind](Image.open(p), tmp_path / f"copy{i}.png") for i, p in enumerate(originals)]
    dist, which = hamming_min(np.array([_hash_file(p) for p in copies], dtype=np.uint64), hashes)
    assert (which == np.arange(len(originals))).all(), (kind, which)
    assert (dist <= NEAR_BITS).all(), (kind, dist)


def test_distinct_lesions_are_not_near(originals):
    hashes = np.array([_hash_file(p) for p in originals], dtype=np.uint64)
    d = hamming(hashes[:, None, None], dihedral_variants(hashes)[None, :, :]).min(axis=2)
    np.fill_diagonal(d, 64)
    assert d.min() > NEAR_BITS


def test_the_variants_of_a_hash_are_the_hashes_of_the_flipped_and_turned_pixels():
    # A 32x32 image: the box mean is the identity, so every variant is exact, bit for bit.
    x = np.asarray(lesion_photo(3, "mel").resize((32, 32)))
    views = [np.rot90(x, k) for k in range(4)] + [np.rot90(x, k)[:, ::-1] for k in range(4)]
    expected = sorted(int(perceptual_hash(v)) for v in views)
    assert sorted(int(v) for v in dihedral_variants(perceptual_hash(x))[0]) == expected
    assert len(set(expected)) == 8  # a lesion photo is not symmetric: eight different hashes


def test_rows_without_a_fingerprint_never_match():
    h = perceptual_hash(np.asarray(lesion_photo(5)))
    dist, which = hamming_min(np.array([h, NO_FINGERPRINT], dtype=np.uint64), np.array([NO_FINGERPRINT, h]))
    assert dist.tolist() == [0, 65] and which.tolist() == [1, -1]
    assert perceptual_hash(np.full((20, 30, 3), 128, np.uint8)) == NO_FINGERPRINT  # flat: nothing to match on
    dist, which = hamming_min(np.array([h], dtype=np.uint64), np.zeros(0, dtype=np.uint64))
    assert dist.tolist() == [65] and which.tolist() == [-1]


def test_hamming_min_is_the_brute_force_minimum_over_every_flip_and_turn():
    rng = np.random.default_rng(0)
    b = rng.integers(1, 2**62, 300, dtype=np.uint64) << np.uint64(1)  # bit 0 is never set
    a = rng.integers(1, 2**62, 40, dtype=np.uint64) << np.uint64(1)
    a[:10] = dihedral_variants(b[:10])[:, 6] ^ np.uint64(0b1011 << 30)  # turned copies, 3 bits off
    a[10], b[5] = NO_FINGERPRINT, NO_FINGERPRINT  # rows without a fingerprint are never matched
    dist, where = hamming_min(a, b, cells=1000)  # blocks of 3 rows: every edge crossed
    brute = hamming(a[:, None, None], dihedral_variants(b)[None, :, :]).min(axis=2).astype(np.int64)  # (40, 300)
    brute[:, 5] = 65
    ok = np.flatnonzero(a != NO_FINGERPRINT)
    assert (dist[ok] == brute[ok].min(axis=1)).all()
    assert (brute[ok, where[ok]] == dist[ok]).all()
    copies = [k for k in range(10) if k != 5]
    assert (where[copies] == copies).all() and (dist[copies] == 3).all()
    assert dist[10] == 65 and where[10] == -1
    assert (hamming_min(a, b[:0])[1] == -1).all()
