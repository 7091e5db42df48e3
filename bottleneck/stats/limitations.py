"""The report's generated "Limitations": what a TRIPOD+AI or CLAIM reviewer asks of a run first, from the run's own
facts (config.json, metrics.json) and the checks `data_checks` makes of the cache's metadata columns.

    cache metadata (dx_type, age) + the cache's source -> data_checks -> metrics.json "data_checks" -> limitations

Pure Python and numpy: every statement recomputes from the run's files.
"""

from __future__ import annotations

import math

import numpy as np

from .clinical import AGE_COLUMNS

# Sources whose group ids name lesions (HAM10000's lesion_id; ISIC 2019 reuses it), and those naming patients.
LESION_SOURCES = {"ham10000": "lesion_id", "isic2019": "lesion_id"}
PATIENT_SOURCES = {"isic2020": "patient_id"}
SOURCE_NAMES = {"ham10000": "HAM10000", "isic2019": "ISIC 2019", "isic2020": "ISIC 2020"}
REFERENCE_COLUMN = "dx_type"  # HAM10000: how each diagnosis was confirmed
HISTOPATHOLOGY = "histo"
REFERENCE_NAMES = {"histo": "histopathology", "follow_up": "follow-up", "consensus": "expert consensus",
                   "confocal": "confocal microscopy"}
AGE_MAX = 110  # an age above this (or of 0) is implausible for a dermoscopic image: a code, or an error


def data_checks(meta: dict, split: np.ndarray, source: str, grouped: bool) -> dict:
    """What the run's rows' metadata say about grouping, the reference standard and ages. meta: column -> (N,)
    strings of the run's labeled rows, `split` their split names; source: the cache's source attribute."""
    return {"grouping": grouping(source, grouped), "reference_standard": reference_standard(meta, split),
            "ages": implausible_ages(meta, split)}


def grouping(source: str, grouped: bool) -> dict:
    """The unit the split and the intervals group by: lesion, patient, or a CSV's group column (unknown)."""
    if not grouped:
        return {"source": source, "unit": None}
    if source in LESION_SOURCES:
        return {"source": source, "unit": "lesion", "column": LESION_SOURCES[source]}
    if source in PATIENT_SOURCES:
        return {"source": source, "unit": "patient", "column": PATIENT_SOURCES[source]}
    return {"source": source, "unit": "group"}


def reference_standard(meta: dict, split: np.ndarray) -> dict | None:
    """Share of images whose label histopathology confirms (`dx_type` == histo), of all the run's rows and of
    test, and the test split's methods; None without a dx_type column (or with an empty one)."""
    col = meta.get(REFERENCE_COLUMN)
    if col is None or not any(str(v).strip() for v in col):
        return None
    how = np.array([str(v).strip().casefold() or "unknown" for v in col], dtype=object)
    histo = how == HISTOPATHOLOGY
    test = split == "test"
    values, counts = np.unique(how[test], return_counts=True)
    return {"column": REFERENCE_COLUMN,
            "histopathology": {"images": int(len(how)), "confirmed": int(histo.sum()),
                               "test_images": int(test.sum()), "test_confirmed": int((histo & test).sum())},
            "test_methods": {str(v): int(k) for v, k in sorted(zip(values, counts), key=lambda t: -t[1])}}


def implausible_ages(meta: dict, split: np.ndarray) -> dict | None:
    """Images of age 0 or over AGE_MAX in the first age column present (of all rows, and of test); None
    without one."""
    column = next((c for c in AGE_COLUMNS if c in meta), None)
    if column is None:
        return None
    ages = np.array([_number(v) for v in meta[column]], dtype=np.float64)
    zero, old, test = ages == 0, ages > AGE_MAX, split == "test"
    return {"column": column, "zero": int(zero.sum()), "over_max": int(old.sum()), "max": AGE_MAX,
            "test_zero": int((zero & test).sum()), "test_over_max": int((old & test).sum())}


def _number(text) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


def limitations(config: dict, metrics: dict, overlap: int) -> list[str]:
    """The report's closing "Limitations" section, generated from the run's facts."""
    split, sizes = config["split"], config["split"]["sizes"]
    test = sizes["test"]
    checks = metrics.get("data_checks") or {}
    out = []
    grouped = any(sizes[s]["groups"] for s in sizes)
    unit = {"lesion": "lesion", "patient": "patient"}.get((checks.get("grouping") or {}).get("unit"),
                                                          "lesion/patient")
    origin = f"reused from `{split['from']}`" if split.get("from") else f"seed {split.get('seed')}"
    out.append((f"One split, grouped by {unit} (no {unit} in two splits)" if grouped else
                "One split with no lesion/patient ids: images of one lesion may sit in both training and test, "
                "which flatters every figure") + f", {origin}; another split or seed moves the figures within "
               "(roughly) their intervals.")
    out += grouping_lines(checks.get("grouping") or {})
    out.append(f"The test split has {test['images']} images"
               + (f" of {test['groups']} lesions" if test["groups"] else "") + ": "
               + ", ".join(f"{n} {k}" for n, k in test["per_class"].items()) + ".")
    out += baseline_lines(metrics.get("test") or {})
    op = metrics.get("operating_point") or {}
    if op.get("threshold") is not None:
        out.append(f"PPV and NPV hold at this test prevalence of {op['positive']} ({op['test_prevalence']:.1%}); "
                   "in a population with another prevalence they differ, while sensitivity and specificity carry "
                   "over better.")
    out += reference_lines(checks.get("reference_standard")) + age_lines(checks.get("ages"))
    out.append("Overlap: " + (f"{overlap} test images have the same bytes (SHA-256) as a training or validation "
                              "image: the test figures are optimistic." if overlap else
                              "no test image has the same bytes (SHA-256) as a training or validation image."))
    out.append(calibration_line(metrics.get("calibration") or {}))
    out += [f"Small numbers: {w}." for w in metrics.get("small_numbers", [])]
    out.append("The intervals cover resampling of these lesions only: not another clinic, camera, dermoscope, "
               "population or skin type, nor a change of label practice; only an external evaluation "
               "(`bottleneck evaluate RUN --cache OTHER`) speaks to those.")
    return out


def grouping_lines(g: dict) -> list[str]:
    """Lesions are not patients: one patient's lesions may sit on both sides of the split."""
    if g.get("unit") == "lesion":
        source = SOURCE_NAMES.get(g["source"], g["source"])
        return [f"Grouped by lesion, not patient: the cache's group ids (`{g['column']}` of {source}) name "
                "lesions, and one patient may have several, so a patient's lesions may sit in both training and "
                "test; the intervals treat lesions as independent, which is too narrow where patients contribute "
                "several lesions."]
    if g.get("unit") == "group":
        return ["Grouped by the cache's group ids (a CSV's group column, lesion or patient as that column says): if "
                "they name lesions rather than patients, one patient's lesions may sit in both training and test, "
                "and the intervals treat them as independent."]
    return []


def baseline_lines(test: dict) -> list[str]:
    """A test accuracy (or balanced accuracy) at or below the majority-class baseline's, said in words."""
    base = test.get("majority_baseline") or {}
    if not base or test.get("accuracy") is None:
        return []
    out = []
    cls = base["class"]
    if test["balanced_accuracy"] <= base["balanced_accuracy"]:
        out.append(f"Test balanced accuracy {test['balanced_accuracy']:.3f} is not above the majority-class "
                   f"baseline's {base['balanced_accuracy']:.3f} (always {cls}): on these figures the head is no "
                   "better than predicting the most frequent class.")
    if test["accuracy"] < base["accuracy"]:
        out.append(f"Test accuracy {test['accuracy']:.3f} is below the majority-class baseline's "
                   f"{base['accuracy']:.3f} (always {cls}): the head gives up accuracy on the common class for recall "
                   f"of the rarer ones (balanced accuracy {test['balanced_accuracy']:.3f} against the baseline's "
                   f"{base['balanced_accuracy']:.3f}); accuracy alone would rank it below doing nothing.")
    return out


def reference_lines(ref: dict | None) -> list[str]:
    """How the labels were confirmed (dx_type): a label not confirmed by histopathology may be wrong."""
    if not ref:
        return []
    h = ref["histopathology"]
    methods = ", ".join(f"{REFERENCE_NAMES.get(m, m)} {k}" for m, k in ref["test_methods"].items())
    share = h["confirmed"] / h["images"] if h["images"] else 0.0
    test_share = h["test_confirmed"] / h["test_images"] if h["test_images"] else 0.0
    return [f"Reference standard: {share:.1%} of the run's images ({test_share:.1%} of test: {methods}) have a "
            f"label confirmed by histopathology (`{ref['column']}` = {HISTOPATHOLOGY}); the others rest on "
            "follow-up, expert consensus or confocal microscopy, can be wrong, and every figure inherits their "
            "errors."]


def age_lines(ages: dict | None) -> list[str]:
    """Ages of 0 or over AGE_MAX: codes or errors, which the age subgroups count as real ages."""
    if not ages or not (ages["zero"] or ages["over_max"]):
        return []
    return [f"Implausible ages: {ages['zero']} images have `{ages['column']}` 0 and {ages['over_max']} over "
            f"{ages['max']} ({ages['test_zero'] + ages['test_over_max']} of them in test); such values are codes or "
            "errors rather than ages, and the age subgroups count them as given."]


def calibration_line(cal: dict) -> str:
    """What calibration did: applied (the temperature and what it improved on validation) or why not."""
    cross = cal.get("cross_fit") or {}
    helped = (f", applied because it lowered the validation negative log-likelihood out of fold "
              f"({cross['nll_before']:.3f} to {cross['nll_after']:.3f}, {cross['folds']} folds)") if cross else ""
    flags = "".join(f" Note: {f}." for f in cal.get("flags", []))
    if cal.get("applied"):
        return (f"Calibration: temperature {cal['temperature']:.2f} fitted on the validation split"
                + (" after undoing the class-weight prior" if any(cal.get("prior_shift") or []) else "") + helped
                + "; the probabilities are calibrated to the validation split's class mix (the training data's), "
                "not a clinic's." + flags)
    return (f"Calibration: not applied ({cal.get('reason', 'switched off')}); probabilities and decisions are the "
            "head's own." + flags)
