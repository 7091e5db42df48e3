"""How a figure reads in a report: the interval, the mark of a figure resting on fewer than ten lesions and its
footnote; and, from real runs, report.md showing the intervals metrics.json holds, which recompute from
predictions.csv and split.csv alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_HEAD, feature_cache

from bottleneck.runs.figures import FEW, ci, few_note
from bottleneck.stats.bootstrap import bootstrap, ratio
from bottleneck.stats.intervals import clopper_pearson
from bottleneck.stats.units import resampling_units


def test_an_interval_reads_with_its_mark_and_the_mark_brings_its_footnote():
    assert ci({"value": 0.8123, "lower": 0.78, "upper": 0.84, "few": False}) == "0.812 (0.780-0.840)"
    assert ci({"value": 1.0, "lower": 0.715, "upper": 1.0, "few": True}) == f"1.000 (0.715-1.000){FEW}"
    assert ci(None) == "-" and ci({"value": 0.5, "lower": None}) == "0.500"  # a record written before intervals
    assert few_note(["| 0.812 (0.780-0.840) |"]) == []
    note = few_note(["| a |", f"| 1.000 (0.715-1.000){FEW} |"])
    assert note[1].startswith(f"{FEW} Rests on fewer than 10 lesions")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A run whose figures sit inside (0, 1): overlapping classes, lesions of two images; few melanoma lesions in
    the test split, many naevus ones."""
    from bottleneck.heads.model import HeadConfig
    from bottleneck.runs import RunOptions, train_head_run

    tmp = tmp_path_factory.mktemp("figures")
    cache = feature_cache(tmp / "c.h5", counts={"bcc": 80, "mel": 36, "nv": 240}, separation=0.35)
    return train_head_run(cache, HeadConfig(**FAST_HEAD), RunOptions(out=tmp / "run", progress=False)).run_dir


def test_report_shows_the_intervals_and_marks_of_metrics_json(noisy_run):
    m = json.loads((noisy_run / "metrics.json").read_text())
    iv, report = m["test"]["intervals"], (noisy_run / "report.md").read_text()
    assert m["bootstrap"]["method"]["proportions"] == "clopper-pearson/deff" and m["bootstrap"]["few_lesions"] == 10
    mel, nv = iv["recall"]["mel"], iv["recall"]["nv"]
    assert mel["few"] and mel["lesions"] < 10 and not nv["few"] and nv["lesions"] >= 10
    assert f"| mel | {m['test']['per_class']['mel']['support']} | {ci(mel)} |" in report and ci(mel).endswith(FEW)
    assert f"| nv | {m['test']['per_class']['nv']['support']} | {ci(nv)} |" in report and FEW not in ci(nv)
    assert f"\n{FEW} Rests on fewer than 10 lesions" in report
    for record in [iv["sensitivity"], iv["specificity"], *iv["recall"].values(), iv["balanced_accuracy"]]:
        assert record["upper"] - record["lower"] > 0 and record["method"], record


def test_every_interval_recomputes_from_predictions_and_split(noisy_run):
    """Proportions from predictions.csv (its test rows, as split.csv names them), resampled by lesion with the
    recorded seed: the same records as metrics.json, and each one's bounds the exact binomial interval of its
    (value, n_eff)."""
    m = json.loads((noisy_run / "metrics.json").read_text())
    preds = pd.read_csv(noisy_run / "predictions.csv", keep_default_na=False)
    split = pd.read_csv(noisy_run / "split.csv", keep_default_na=False)
    test_ids = set(split.loc[split["split"] == "test", "image_id"])
    test = preds[preds["image_id"].isin(test_ids)]
    assert (test["split"] == "test").all() and len(test) == m["test"]["n"]
    true, pred = test["true"].to_numpy(), test["predicted"].to_numpy()
    units = resampling_units(test["group"].to_numpy(dtype=object))
    stats = {n: ratio((true == n) & (pred == n), true == n) for n in ("bcc", "mel", "nv")}
    stats["specificity"] = ratio((true != "mel") & (pred != "mel"), true != "mel")
    again = bootstrap(stats, None, units, seed=m["bootstrap"]["seed"], resamples=m["bootstrap"]["resamples"])
    iv = m["test"]["intervals"]
    for name, record in [*iv["recall"].items(), ("specificity", iv["specificity"])]:
        assert again[name] == pytest.approx(record), name
        assert record["lesions"] == len(np.unique(units[(true == name) if name != "specificity" else true != "mel"]))
        x = record["value"] * record["n_eff"]
        assert (record["lower"], record["upper"]) == pytest.approx(clopper_pearson(x, record["n_eff"]), abs=1e-6)
    assert iv["sensitivity"] == iv["recall"]["mel"]
