"""The generated limitations: what a TRIPOD+AI/CLAIM reviewer asks first (lesions that are not patients, the reference
standard, implausible ages, a test accuracy below the majority baseline), each said when its condition holds in a
real run and not otherwise; `data_checks` of the cache's metadata columns."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, run_cli

from bottleneck.stats.limitations import data_checks, limitations

AGES = {3: "0", 77: "0", 150: "0.0", 200: "120"}  # row -> an implausible age; every other row 45


def ham_meta(k: int, name: str, i: int) -> dict:
    """HAM10000-like metadata: every mel and bkl confirmed by histopathology, one nv in three."""
    how = "histo" if name != "nv" or i % 3 == 0 else ("follow_up", "consensus")[i % 2]
    return {"dx_type": how, "age": AGES.get(k, "45"), "sex": ("male", "female")[k % 2]}


@pytest.fixture(scope="module")
def reviewer_run(tmp_path_factory):
    """A HAM10000-sourced cache (lesion ids) of 300 images, 83% nv and hard to separate, with dx_type and age: a
    balanced head trades accuracy for recall of the rare classes."""
    tmp = tmp_path_factory.mktemp("limits")
    cache = feature_cache(tmp / "c.h5", counts={"bkl": 25, "mel": 25, "nv": 250}, separation=0.4, meta=ham_meta,
                          source="ham10000")
    r = run_cli("train-head", cache, "--out", tmp / "run", "--epochs", "6", "--patience", "3", "--quiet")
    assert r.exit_code == 0, r.output
    d = tmp / "run"
    return {"run": d, "config": json.loads((d / "config.json").read_text()),
            "metrics": json.loads((d / "metrics.json").read_text()), "report": (d / "report.md").read_text()}


def limits_text(report: str) -> str:
    return report[report.index("## Limitations"):]


def test_each_reviewer_limitation_is_said_when_it_holds(reviewer_run):
    m, text = reviewer_run["metrics"], limits_text(reviewer_run["report"])
    assert m["data_checks"]["grouping"] == {"source": "ham10000", "unit": "lesion", "column": "lesion_id"}
    assert "One split, grouped by lesion (no lesion in two splits)" in text
    assert "Grouped by lesion, not patient: the cache's group ids (`lesion_id` of HAM10000)" in text
    assert "the intervals treat lesions as independent" in text

    # the reference standard and the ages recompute from split.csv and the metadata written
    split = pd.read_csv(reviewer_run["run"] / "split.csv").set_index("image_id")["split"]
    used = split[split != ""]
    names = {k: ("bkl", "mel", "nv")[0 if k < 25 else 1 if k < 50 else 2] for k in range(300)}
    within = {k: k - {"bkl": 0, "mel": 25, "nv": 50}[n] for k, n in names.items()}
    how = {i: ham_meta(int(i[3:]), names[int(i[3:])], within[int(i[3:])])["dx_type"] for i in used.index}
    histo = sum(h == "histo" for h in how.values()) / len(how)
    test_ids = used.index[used == "test"]
    test_histo = sum(how[i] == "histo" for i in test_ids) / len(test_ids)
    assert f"Reference standard: {histo:.1%} of the run's images ({test_histo:.1%} of test: " in text
    assert "(`dx_type` = histo)" in text
    ref = m["data_checks"]["reference_standard"]["histopathology"]
    assert (ref["images"], ref["test_images"]) == (len(used), len(test_ids))
    zero = sum(1 for k, a in AGES.items() if float(a) == 0 and f"img{k:05d}" in used.index)
    old = sum(1 for k, a in AGES.items() if float(a) > 110 and f"img{k:05d}" in used.index)
    assert zero and f"Implausible ages: {zero} images have `age` 0 and {old} over 110" in text

    t, base = m["test"], m["test"]["majority_baseline"]
    assert base["class"] == "nv" and t["accuracy"] < base["accuracy"]  # the condition this run was built for
    assert (f"Test accuracy {t['accuracy']:.3f} is below the majority-class baseline's {base['accuracy']:.3f} "
            "(always nv)") in text


def test_and_not_otherwise(reviewer_run, synth_run):
    """The same run's facts with each condition removed, and a run without metadata: none of those lines."""
    config, metrics = reviewer_run["config"], reviewer_run["metrics"]
    fixed = copy.deepcopy(metrics)
    fixed["data_checks"] |= {"grouping": {"source": "isic2020", "unit": "patient", "column": "patient_id"},
                             "reference_standard": None}
    fixed["data_checks"]["ages"] |= {"zero": 0, "over_max": 0, "test_zero": 0, "test_over_max": 0}
    fixed["test"]["accuracy"] = fixed["test"]["majority_baseline"]["accuracy"] + 0.01
    text = "\n".join(limitations(config, fixed, 0))
    assert "One split, grouped by patient" in text
    for said in ("not patient", "Reference standard", "Implausible ages", "below the majority-class baseline"):
        assert said not in text, said
    fixed["test"]["balanced_accuracy"] = fixed["test"]["majority_baseline"]["balanced_accuracy"]
    assert "is not above the majority-class baseline's" in "\n".join(limitations(config, fixed, 0))

    plain = (synth_run["run"] / "report.md").read_text()
    m = json.loads((synth_run["run"] / "metrics.json").read_text())
    assert m["data_checks"] == {"grouping": {"source": "", "unit": "group"}, "reference_standard": None,
                                "ages": None}
    for said in ("not patient", "Reference standard", "Implausible ages", "majority-class baseline's"):
        assert said not in limits_text(plain), said
    assert "Grouped by the cache's group ids" in limits_text(plain)  # a CSV-like source: lesion or patient


def test_data_checks_of_metadata_columns():
    meta = {"dx_type": np.array(["histo", "follow_up", "HISTO ", "", "consensus"], dtype=object),
            "age_approx": np.array(["0", "0.0", "111", "", "n/a"], dtype=object)}
    split = np.array(["train", "test", "test", "val", "test"], dtype=object)
    checks = data_checks(meta, split, "isic2019", grouped=True)
    assert checks["grouping"]["unit"] == "lesion"
    assert checks["reference_standard"]["histopathology"] == {"images": 5, "confirmed": 2, "test_images": 3,
                                                              "test_confirmed": 1}
    assert checks["reference_standard"]["test_methods"] == {"consensus": 1, "follow_up": 1, "histo": 1}
    assert checks["ages"] == {"column": "age_approx", "zero": 2, "over_max": 1, "max": 110, "test_zero": 1,
                              "test_over_max": 1}
    assert data_checks({}, split, "folders", grouped=False) == {"grouping": {"source": "folders", "unit": None},
                                                                 "reference_standard": None, "ages": None}
