"""Coverage of the reported intervals: simulated test splits with a known sensitivity, lesions of HAM10000's sizes,
images of one lesion correlated. The share of simulated splits whose 95% interval holds the true sensitivity is
the interval's coverage; it should be about 0.95, and under it the report claims more certainty than it has.

Each simulated split holds K positive lesions, each with m images, m drawn from HAM10000's images per lesion
(`HAM_LESION_SIZES`). A lesion's chance of being detected is drawn from a Beta distribution with mean `truth` and
intra-lesion correlation rho (0: its images are independent; near 1: they all agree), and each of its images is
detected with that chance. The figure is the split's image-level sensitivity, with the interval the reports give
(`stats.interval_of`, on the same lesion bootstrap as `stats.bootstrap`), against Wilson's on the same effective
sample size and the percentile interval (what reports printed before). Pure numpy; no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from ..stats import interval_of, proportion_interval, ratio, resample_weights

# Images per lesion in HAM10000 (10,015 images of 7,470 lesions): most lesions have one image, some 2-6. Counts
# of the published shape, scaled so that both totals are exact.
HAM_LESION_SIZES = ((1, 5555), (2, 1425), (3, 380), (4, 85), (5, 20), (6, 5))
LESIONS = (5, 10, 20, 100)  # positive lesions per simulated split
RHOS = (0.0, 0.6, 0.9)  # intra-lesion correlations simulated
TRUTH = 0.9


def lesion_sizes() -> np.ndarray:
    """The images of each of HAM10000's 7,470 lesions, as drawn from (10,015 in all)."""
    return np.repeat([m for m, _ in HAM_LESION_SIZES], [k for _, k in HAM_LESION_SIZES])


def simulate_split(rng: np.random.Generator, lesions: int, truth: float, rho: float, sizes: np.ndarray):
    """(units, detected) of the images of `lesions` positive lesions: units (N,) the lesion of each image."""
    m = rng.choice(sizes, lesions)
    if rho > 0:
        spread = (1 - rho) / rho  # Beta(a, b) with a + b = (1 - rho) / rho has intra-class correlation rho
        chance = rng.beta(truth * spread, (1 - truth) * spread, lesions)
    else:
        chance = np.full(lesions, truth)
    units = np.repeat(np.arange(lesions), m)
    return units, rng.random(len(units)) < chance[units]


def coverage(lesions: int, rho: float, sims: int, resamples: int, seed: int, truth: float = TRUTH) -> dict:
    """Coverage and mean width of each interval over `sims` simulated splits of `lesions` positive lesions."""
    rng, sizes = np.random.default_rng(seed), lesion_sizes()
    hits = {"reported": 0, "wilson": 0, "percentile": 0}
    width = dict.fromkeys(hits, 0.0)
    images = 0
    for _ in range(sims):
        units, detected = simulate_split(rng, lesions, truth, rho, sizes)
        stat = ratio(detected, np.ones(len(units), dtype=bool))
        value = float(detected.mean())
        draws = np.concatenate([stat(w) for w in resample_weights(units, resamples, int(rng.integers(2**31)))])
        per_lesion = np.bincount(units).astype(np.float64)
        found = {"reported": interval_of(stat, value, draws, units),
                 "wilson": proportion_interval(value, draws, per_lesion, method="wilson"),
                 "percentile": dict(zip(("lower", "upper"), np.percentile(draws, [2.5, 97.5])))}
        for k, iv in found.items():
            hits[k] += iv["lower"] <= truth <= iv["upper"]
            width[k] += iv["upper"] - iv["lower"]
        images += len(units)
    return {"lesions": lesions, "rho": rho, "truth": truth, "sims": sims, "images": images / sims,
            "coverage": {k: v / sims for k, v in hits.items()}, "width": {k: v / sims for k, v in width.items()},
            "method": found["reported"]["method"]}


def bench_coverage(sims: int, resamples: int = 1000, seed: int = 0, lesions=LESIONS, rhos=RHOS) -> dict:
    """Coverage of a true sensitivity of TRUTH for each number of positive lesions and each correlation."""
    rows = [coverage(k, rho, sims, resamples, seed + 1000 * i + j)
            for i, k in enumerate(lesions) for j, rho in enumerate(rhos)]
    return {"truth": TRUTH, "sims": sims, "resamples": resamples, "sizes": HAM_LESION_SIZES, "rows": rows}


def format_coverage(c: dict) -> list[str]:
    lesions, images = sum(k for _, k in c["sizes"]), sum(m * k for m, k in c["sizes"])
    lines = [f"interval coverage of a true sensitivity of {c['truth']} ({c['sims']} simulated test splits per row, "
             f"{c['resamples']} lesion resamples each; lesion sizes of HAM10000, {images:,} images of "
             f"{lesions:,} lesions; target 0.95):"]
    for r in c["rows"]:
        cov, w = r["coverage"], r["width"]
        lines.append(f"  {r['lesions']:3d} positive lesions ({r['images']:.1f} images), rho {r['rho']:.1f}: "
                     f"reported ({r['method']}) {cov['reported']:.3f} (width {w['reported']:.3f}); "
                     f"Wilson {cov['wilson']:.3f} ({w['wilson']:.3f}); percentile {cov['percentile']:.3f} "
                     f"({w['percentile']:.3f})")
    return lines
