"""Intervals that keep their coverage with few lesions and clustered images: what `bootstrap.py` reports.

A proportion of images (sensitivity, specificity, PPV, NPV, a class's recall) is x of n images, but the images of
one lesion mostly agree, so n images carry the evidence of fewer independent ones. The lesion bootstrap measures
how many: the design effect deff = (the bootstrap's variance of the figure) / (the binomial variance p(1-p)/n),
floored at 1, gives an effective sample size n_eff = n / deff, and the interval is Clopper-Pearson's exact
binomial interval of p * n_eff successes in n_eff trials. At 0% or 100% every resample agrees and the bootstrap
says nothing: the design effect is then the largest the lesions' sizes allow (all images of a lesion agreeing),
so 11 of 11 melanomas in 11 single-image lesions read 1.000 (0.715-1.000), never 1.000 (1.000-1.000).

Chosen by measurement (`bottleneck bench --part coverage`, docs/clinical.md "Intervals"): the percentile interval
covered a true sensitivity of 0.9 in 46-74% of simulated test splits with 5-10 positive lesions; Wilson's score
interval on n_eff dipped under 0.94 with 100 lesions; Clopper-Pearson on n_eff stayed at or above 0.95 (erring
wide with a handful of lesions, which is the honest side).

Figures that are not proportions (AUC, balanced accuracy) keep the percentile interval of the lesion bootstrap,
except at 0 or 1 or where it has no width: there the exact binomial interval on the fewest lesions the figure
rests on bounds them (a mean of proportions, or an AUC, varies no more than one proportion of that many lesions,
Birnbaum and Klose 1957). Every figure resting on fewer than FEW_LESIONS lesions is flagged `few`.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95  # two-sided intervals
FEW_LESIONS = 10  # a figure resting on fewer lesions (e.g. positive ones) is flagged where it is shown
PROPORTION = "clopper-pearson/deff"  # the method of proportions, as metrics.json names it
PERCENTILE = "percentile"
BOUND = "clopper-pearson/lesions"  # AUC or balanced accuracy at an edge


def clopper_pearson(x: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval of x successes in n trials (x, n may be fractional: effective counts)."""
    from scipy.special import betaincinv

    a = (1 - level) / 2
    lo = 0.0 if x <= 0 else float(betaincinv(x, n - x + 1, a))
    hi = 1.0 if x >= n else float(betaincinv(x + 1, n - x, 1 - a))
    return lo, hi


def wilson(x: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval of x successes in n trials (measured against Clopper-Pearson in the bench)."""
    from scipy.special import ndtri

    z = float(ndtri(1 - (1 - level) / 2))
    p = x / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


METHODS = {"clopper-pearson": clopper_pearson, "wilson": wilson}


def clustered_n(sizes: np.ndarray) -> float:
    """Effective sample size of images in lesions of `sizes` images when a lesion's images all agree:
    (sum m)^2 / sum m^2, the number of lesions when they are of one size, fewer when some are larger."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(sizes.sum() ** 2 / (sizes**2).sum())


def design_effect(p: float, draws: np.ndarray, sizes: np.ndarray) -> float | None:
    """deff = bootstrap variance / binomial variance, at least 1; None where the bootstrap cannot tell (p at
    0 or 1, fewer than two lesions, no variation). The bootstrap variance divides by k lesions where an unbiased
    one divides by k - 1, so it is scaled by k / (k - 1)."""
    k, n = len(sizes), float(np.sum(sizes))
    if not 0 < p < 1 or k < 2 or len(draws) < 2:
        return None
    var = float(np.var(draws)) * k / (k - 1)
    return max(1.0, var / (p * (1 - p) / n)) if var > 0 else None


def proportion_interval(value: float, draws: np.ndarray, sizes: np.ndarray, level: float = LEVEL,
                        method: str = "clopper-pearson") -> dict:
    """The interval of a proportion `value` of images in lesions of `sizes` images (the denominator's), from
    the lesion bootstrap's `draws` of it: {lower, upper, method, lesions, few, images, deff, n_eff}."""
    n = float(np.sum(sizes))
    deff = design_effect(value, draws, sizes)
    n_eff = n / deff if deff is not None else clustered_n(sizes)
    lo, hi = METHODS[method](value * n_eff, n_eff, level)
    return {"lower": lo, "upper": hi, "method": PROPORTION if method == "clopper-pearson" else f"{method}/deff",
            "lesions": int(len(sizes)), "few": bool(len(sizes) < FEW_LESIONS), "images": int(round(n)),
            "deff": None if deff is None else round(deff, 6), "n_eff": round(n_eff, 6)}


def percentile_interval(value: float, draws: np.ndarray, lesions: int, level: float = LEVEL) -> dict:
    """The percentile interval of a figure that is not a proportion (AUC, balanced accuracy) resting on
    `lesions` lesions (the fewest of any class it uses); at 0 or 1, or with no width, the exact binomial
    interval on that many lesions instead (`BOUND`)."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail]) if len(draws) else (np.nan, np.nan)
    out = {"lesions": int(lesions), "few": bool(lesions < FEW_LESIONS)}
    if not (0 < value < 1) or not hi - lo > 0:  # NaN included: nothing drawn
        lo, hi = clopper_pearson(value * max(lesions, 1), max(lesions, 1), level)
        return {"lower": lo, "upper": hi, "method": BOUND} | out
    return {"lower": float(lo), "upper": float(hi), "method": PERCENTILE} | out
