"""train-head --folds K through the real CLI: pooled out-of-fold figures over every image, recomputed from the run's
own predictions.csv; the served head, the reused split and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, run_cli
from scipy.special import logsumexp
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
QUICK = ["--hidden", "16", "--epochs", "4", "--patience", "2", "-q"]  # a fit in well under a second


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The issue's case: 70 images, 7 classes of 10, in lesions of 2 (35 lesions); one run with --folds 5 --test 0."""
    tmp = tmp_path_factory.mktemp("folds")
    cache = feature_cache(tmp / "c70.h5", counts={c: 10 for c in CLASSES}, dim=16, images_per_group=2)
    r = run_cli("train-head", cache, "--out", tmp / "oof", "--folds", "5", "--test", "0", *QUICK)
    assert r.exit_code == 0, r.output
    return {"cache": cache, "run": tmp / "oof", "tmp": tmp}


def read(run, name):
    return json.loads((run / name).read_text())


def test_folds_5_test_0_reports_pooled_out_of_fold_figures_over_all_70_images(small):
    run = small["run"]
    metrics, config = read(run, "metrics.json"), read(run, "config.json")
    oof = metrics["oof"]
    assert "test" not in metrics and oof["metrics"]["n"] == 70
    assert oof["bootstrap"]["units"] == 35  # intervals resample the 70 images' 35 lesions
    iv = oof["metrics"]["intervals"]
    for key in ("balanced_accuracy", "roc_auc_macro"):
        assert iv[key]["lower"] <= oof["metrics"][key] <= iv[key]["upper"]
    assert oof["lesion_level"]["lesions"] == 35
    # per fold, beside the pooled figures: five folds covering the 70 images, mean and sample std
    per_fold = metrics["folds"]["per_fold"]
    assert len(per_fold) == 5 and sum(f["images"] for f in per_fold) == 70
    bal = [f["balanced_accuracy"] for f in per_fold]
    summary = metrics["folds"]["summary"]["balanced_accuracy"]
    assert summary["mean"] == pytest.approx(np.mean(bal)) and summary["std"] == pytest.approx(np.std(bal, ddof=1))
    assert config["command"][-2:] == ["--folds", "5"] and "--test" in config["command"]
    report = (run / "report.md").read_text()
    assert "5-fold out-of-fold over 70 images of 35 lesions" in report and "no test split" in report


def test_every_out_of_fold_figure_recomputes_from_predictions_csv(small):
    run = small["run"]
    m = read(run, "metrics.json")["oof"]["metrics"]
    preds = pd.read_csv(run / "predictions.csv", keep_default_na=False, float_precision="round_trip")
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    assert len(preds) == len(split) == 70 and set(preds["fold"]) == {1, 2, 3, 4, 5}
    assert dict(zip(split.image_id, split.fold)) == dict(zip(preds.image_id, preds.fold))
    assert preds.groupby("group")["fold"].nunique().max() == 1  # a lesion is held out by one fold only
    assert balanced_accuracy_score(preds["true"], preds["predicted"]) == m["balanced_accuracy"]
    logp = preds[[f"logp_{c}" for c in CLASSES]].to_numpy()
    aucs = []
    for k, c in enumerate(CLASSES):
        others = logsumexp(np.delete(logp, k, axis=1), axis=1)
        aucs.append(roc_auc_score(preds["true"] == c, logp[:, k] - others))
        assert aucs[-1] == m["roc_auc_per_class"][c]
    assert np.mean(aucs) == m["roc_auc_macro"]


@pytest.mark.slow
def test_a_reused_folds_split_and_the_served_head(small):
    """A run with a test split: its test is scored by the head trained on all non-test rows, `evaluate` scores it the
    same, and --split-from of the run trains a plain run on the same test images."""
    tmp, cache = small["tmp"], small["cache"]
    r = run_cli("train-head", cache, "--out", tmp / "with-test", "--folds", "2", "--test", "0.3", *QUICK)
    assert r.exit_code == 0, r.output
    metrics = read(tmp / "with-test", "metrics.json")
    split = pd.read_csv(tmp / "with-test" / "split.csv", keep_default_na=False)
    test_ids = set(split.image_id[split.split == "test"])
    assert metrics["oof"]["metrics"]["n"] == len(split) - len(test_ids) == metrics["train"]["n"]
    assert (split.fold[split.split == "test"] == "").all()
    e = run_cli("evaluate", tmp / "with-test")
    assert e.exit_code == 0, e.output
    evaluated = read(tmp / "with-test" / "eval-test", "metrics.json")
    assert evaluated["metrics"]["balanced_accuracy"] == pytest.approx(metrics["test"]["balanced_accuracy"])
    again = run_cli("train-head", cache, "--out", tmp / "reused", "--split-from", tmp / "with-test", *QUICK)
    assert again.exit_code == 0, again.output
    reused = pd.read_csv(tmp / "reused" / "split.csv", keep_default_na=False)
    assert set(reused.image_id[reused.split == "test"]) == test_ids


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "--folds should be 0"),
    (["--folds", "-3"], "--folds should be 0"),
    (["--folds", "6", "--test", "0"], "class 'akiec' has only 5 lesions among the 70 images"),
    (["--folds", "5", "--augment"], "--folds does not support --augment or --tta"),
])
def test_folds_refusals_are_one_line_and_write_nothing(small, args, message):
    out = small["tmp"] / "refused"
    r = run_cli("train-head", small["cache"], "--out", out, *args, *QUICK)
    assert r.exit_code == 1 and message in r.output and not out.exists()
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1


def test_evaluate_of_a_run_without_a_test_split_says_what_to_do(small):
    r = run_cli("evaluate", small["run"])
    assert r.exit_code == 1 and "has no labeled test images" in r.output and "--cache OTHER.h5" in r.output
    assert not list(small["run"].glob("eval-*"))  # nothing written
