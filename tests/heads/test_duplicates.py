"""Near-duplicate search: hash pairs exact against brute force (flips and turns included), cosine pairs exact and
from buckets, features that cannot tell images apart skipped, pairs inside one group dropped."""

import numpy as np

from bottleneck.heads.duplicates import cosine_pairs, hash_pairs, near_duplicates
from bottleneck.images import NEAR_BITS, NO_FINGERPRINT, dihedral_variants, hamming


def clustered_hashes(rng, clusters=30, per=12, max_flips=9):
    """Hashes in clusters: each a random flip or quarter turn of its cluster's base with up to `max_flips` bits
    changed, so that pairs fall on both sides of NEAR_BITS."""
    base = rng.integers(1, 2 ** 63, clusters, dtype=np.uint64) << np.uint64(1)
    out = []
    for b in base:
        for _ in range(per):
            v = dihedral_variants(b)[0, rng.integers(8)]
            for bit in rng.choice(np.arange(1, 64), rng.integers(0, max_flips + 1), replace=False):
                v ^= np.uint64(1) << np.uint64(bit)
            out.append(v)
    return np.array(out, np.uint64)


def brute_force(h):
    want = {}
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            if h[i] != NO_FINGERPRINT and h[j] != NO_FINGERPRINT:
                d = int(hamming(h[i], dihedral_variants(h[j])[0]).min())
                if d <= NEAR_BITS:
                    want[(i, j)] = d
    return want


def test_hash_pairs_are_exactly_the_brute_force_pairs_flips_and_turns_included():
    rng = np.random.default_rng(0)
    h = clustered_hashes(rng)
    h[::29] = NO_FINGERPRINT  # rows without a fingerprint are never paired
    pairs, bits = hash_pairs(h)
    want = brute_force(h)
    assert len(want) > 100 and any(d == NEAR_BITS for d in want.values())
    assert dict(zip(map(tuple, pairs.tolist()), bits.tolist())) == want
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_a_flipped_copy_is_found_and_far_hashes_are_not():
    h = np.array([0b1011 << 20 | 0b110 << 40 | 0b1010, 0, 12345 << 7], np.uint64)
    turned = dihedral_variants(h[0])[0, 5] ^ np.uint64(1 << 33) ^ np.uint64(1 << 50)  # turned, two bits off
    pairs, bits = hash_pairs(np.r_[h, turned].astype(np.uint64))
    assert pairs.tolist() == [[0, 3]] and bits.tolist() == [2]


def planted(rng, n, dim, copies, lo=0.975):
    """Nonnegative features (as a ReLU backbone's) with `copies` rows replaced by copies at a cosine of lo..0.995."""
    x = np.abs(rng.standard_normal((n, dim))).astype(np.float32)
    src = rng.choice(n, 2 * copies, replace=False)
    a, b = src[:copies], src[copies:]
    for s, t, c in zip(a, b, rng.uniform(lo, 0.995, copies)):
        u = x[s] / np.linalg.norm(x[s])
        e = rng.standard_normal(dim)
        e -= e @ u * u
        x[t] = (c * u + np.sqrt(1 - c * c) * e / np.linalg.norm(e)) * 3
    return x, {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())}


def brute_cosine(x, threshold):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(u @ u.T >= threshold, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_cosine_pairs_exact_blockwise_equal_brute_force():
    rng = np.random.default_rng(1)
    x, _ = planted(rng, 700, 64, 20)
    pairs, cos, how = cosine_pairs(x, 0.97, block=128)
    assert how["search"] == "exact"
    assert set(map(tuple, pairs.tolist())) == brute_cosine(x, 0.97) and len(pairs) >= 20
    assert (cos >= 0.97).all()


def test_cosine_pairs_from_buckets_find_the_copies_and_only_verified_pairs():
    rng = np.random.default_rng(2)
    x, copies = planted(rng, 3000, 128, 40, lo=0.98)
    pairs, cos, how = cosine_pairs(x, 0.97, exact_rows=1000)
    assert how["search"] == "buckets" and how["recall"] >= 0.99 and how["tables"] >= 1
    found = set(map(tuple, pairs.tolist()))
    assert found <= brute_cosine(x, 0.97)  # verified: nothing below the threshold
    assert len(found & copies) >= 38  # the buckets miss a pair at the threshold rarely (recall 0.99 there)
    assert (cos >= 0.97).all()


def test_features_that_do_not_tell_images_apart_are_not_searched():
    rng = np.random.default_rng(3)
    x = 100 + rng.normal(0, 1e-3, (200, 16))  # a random-init backbone: every image alike
    pairs, _, how = cosine_pairs(x, 0.97)
    assert len(pairs) == 0 and how["search"] == "skipped" and "do not tell images apart" in how["reason"]


def test_near_duplicates_keeps_pairs_across_groups_and_names_the_checks():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    x[1] = x[0] * 2  # cosine 1, other group
    x[3] = x[2]  # cosine 1, same group: not a finding
    h = rng.integers(1, 2 ** 63, 6, dtype=np.uint64) << np.uint64(1)
    h[4] = h[0]  # same hash, other group
    h[1] = h[0]  # also by hash
    keys = np.array(["g:a", "g:b", "g:c", "g:c", "i:x", "i:y"])
    p = near_duplicates(x, h, keys)
    got = dict(zip(map(tuple, p.rows.tolist()), p.kinds().tolist()))
    assert got == {(0, 1): "phash+cosine", (0, 4): "phash", (1, 4): "phash"}
    assert p.checks["phash"]["search"] == "exact" and p.checks["cosine"]["search"] == "exact"
    none = near_duplicates(x, None, keys)
    assert none.checks["phash"]["search"] == "skipped" and set(map(tuple, none.rows.tolist())) == {(0, 1)}
