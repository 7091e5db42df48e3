"""The `ceiling` part on 8 small images: real extractions with the stand-in backbone, per core count and with an
emulated GPU forward, beside the decode-only rate of the same pipeline."""

import pytest

from bottleneck.bench import BenchOptions
from bottleneck.bench.pipeline_ceiling import GPU_IMAGES_PER_S, bench_ceiling, drain_rate, format_ceiling
from bottleneck.cache import load_cache


def test_the_ceiling_figures_come_from_real_extractions(tmp_path):
    opts = BenchOptions(ceiling_images=8, batch_size=2, dim=16, image_size=32, repeats=1)
    r = bench_ceiling(opts, tmp_path, counts=(1,))
    assert (r["images"], r["input_size"], r["batch_size"], r["dim"]) == (8, 32, 2, 16)
    (c,) = r["cores"]
    assert c["cores"] == 1 and c["decode_images_per_s"] > 0 and c["extract_images_per_s"] > 0
    assert c["decode_images_per_s"] == pytest.approx(sum(c["decode_runs"]) / 2)  # the median of the two
    assert c["ratio"] == pytest.approx(c["extract_images_per_s"] / c["decode_images_per_s"]) and c["spread"] == 0
    g = r["emulated_gpu"]
    assert g["target_images_per_s"] == GPU_IMAGES_PER_S and 0 < g["forward_images_per_s"] <= GPU_IMAGES_PER_S
    assert g["bound_images_per_s"] == min(g["forward_images_per_s"], g["decode_images_per_s"])
    assert g["ratio"] == pytest.approx(g["extract_images_per_s"] / g["bound_images_per_s"])
    assert len(g["decode_runs"]) == 2 and len(g["extract_runs"]) == len(g["ratio_runs"]) == 1
    caches = sorted(tmp_path.glob("ceiling-*.h5"))  # the warm-up, one per core count, the emulated GPU's
    assert len(caches) == 3
    for cache in caches:
        data = load_cache(cache)
        assert data.features.shape == (8, 16)
    lines = format_ceiling(r)
    assert len(lines) == 4 and lines[1].startswith("  1 core: extract ") and "emulated GPU" in lines[2]
    assert "casts each uint8 batch" in lines[3]


def test_the_decode_only_rate_counts_the_images_after_the_first_batch(tmp_path):
    from bottleneck.bench.data import write_bench_images

    paths = sorted(str(p) for p in write_bench_images(tmp_path, 4).rglob("*.jpg"))
    assert drain_rate(paths, 32, 2) > 0
    assert drain_rate(paths[:2], 32, 2) == 0.0  # one batch: no steady state to time
