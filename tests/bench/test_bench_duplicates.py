"""The near-duplicate benchmark: copies of synthetic lesion photos found by their fingerprints, distinct lesions
apart; a small run (the figures docs/benchmarks.md gives come from `bottleneck bench --part duplicates`)."""

import pytest

from bottleneck.bench.duplicates import KINDS, THRESHOLDS, bench_duplicates, format_duplicates
from bottleneck.images import NEAR_BITS


@pytest.mark.slow
def test_a_small_run_finds_the_copies_a_checksum_misses_and_keeps_distinct_lesions_apart():
    d = bench_duplicates(images=6, check=(10, 1000))
    assert list(d["kinds"]) == list(KINDS) and d["distinct"]["pairs"] == 15
    for kind in ("jpeg q70", "resized 50%", "resized 200%", "mirrored", "turned 90", "turned 180, jpeg q85"):
        assert d["kinds"][kind]["found_bits"][NEAR_BITS] == 1.0, kind
    assert d["distinct"]["within_bits"][NEAR_BITS] == 0.0
    found = [d["kinds"]["cropped 10%"]["found_bits"][t] for t in THRESHOLDS]
    assert found == sorted(found)  # a looser threshold finds at least as many
    assert "found_cosine" in d["kinds"]["jpeg q70"] and 0 < d["hash_ms"] and 0 < d["check_s"]
    text = "\n".join(format_duplicates(d))
    assert f"within {NEAR_BITS} bits" in text and "cropped 10%" in text
