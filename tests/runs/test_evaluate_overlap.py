"""evaluate --cache on external data that the run may have seen: images with the bytes or the lesion of a training
or validation image are left out and counted; test images of the run's own split are kept; nothing left is refused;
the majority baseline is the training split's; predictions.csv recomputes the metrics exactly."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, restamp, run_cli

from bottleneck.heads.model import HeadConfig
from bottleneck.runs.evaluate import evaluate_run
from bottleneck.runs.train import RunOptions, train_head_run

COUNTS = {"bcc": 30, "mel": 30, "nv": 60}  # nv is the training majority


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    cache = feature_cache(tmp / "train.h5", counts=COUNTS, dim=16)
    out = train_head_run(cache, HeadConfig(epochs=6, patience=3, hidden=(16,)),
                         RunOptions(out=tmp / "run", progress=False)).run_dir
    split = pd.read_csv(out / "split.csv", dtype=str).set_index("image_id")["split"]
    return {"tmp": tmp, "cache": cache, "run": out, "split": split}


def ids_of(run, *splits):
    return set(run["split"].index[run["split"].isin(splits)])


def test_a_copy_of_the_training_cache_keeps_only_the_test_rows(run):
    copy = shutil.copy(run["cache"], run["tmp"] / "copy.h5")
    r = run_cli("evaluate", run["run"], "--cache", copy)
    assert r.exit_code == 0, r.output
    leaked, test = ids_of(run, "train", "val"), ids_of(run, "test")
    line = (f"{len(leaked)} of {len(leaked) + len(test)} images of copy.h5 are in this run's training or validation "
            f"data (same bytes: {len(leaked)}")
    assert line in r.output
    saved = json.loads((run["run"] / "eval-copy" / "metrics.json").read_text())
    assert saved["overlap_checked"] and saved["overlap"]["same_bytes"] == len(leaked)
    assert saved["overlap"]["excluded"] == len(leaked) and saved["metrics"]["n"] == len(test)
    assert set(pd.read_csv(run["run"] / "eval-copy" / "excluded.csv")["image_id"]) == leaked
    assert set(pd.read_csv(run["run"] / "eval-copy" / "predictions.csv")["image_id"]) == test
    assert "left out" in (run["run"] / "eval-copy" / "report.md").read_text()
    # the held-out rows score as on the run's own test split
    own = json.loads((run["run"] / "metrics.json").read_text())["test"]
    assert saved["metrics"]["confusion_matrix"] == own["confusion_matrix"]


def test_a_cache_without_overlap_keeps_every_image(run):
    other = restamp(feature_cache(run["tmp"] / "fresh.h5", counts={"bcc": 6, "MEL": 6, "nv": 6}, dim=16, seed=3),
                    salt="f")
    r = evaluate_run(run["run"], other)
    assert r.overlap.checked and r.overlap.excluded == 0 and r.metrics["n"] == 18
    assert "none of the 18 images of fresh.h5" in r.overlap.message("fresh.h5")
    assert not (r.out_dir / "excluded.csv").exists()


def test_a_cache_of_training_images_only_is_refused(run):
    data_sha = {}
    with h5py.File(run["cache"], "r") as f:
        for i, s in zip(f["image_id"].asstr()[:], f["sha256"].asstr()[:]):
            data_sha[i] = s
    train = sorted(ids_of(run, "train"))[:9]
    other = restamp(feature_cache(run["tmp"] / "seen.h5", counts={"bcc": 3, "mel": 3, "nv": 3}, dim=16),
                    sha256=[data_sha[i] for i in train])
    r = run_cli("evaluate", run["run"], "--cache", other)
    assert r.exit_code == 1
    assert "9 of 9 images of seen.h5 are in this run's training or validation data" in r.output
    assert "nothing is left to evaluate" in r.output
    assert not (run["run"] / "eval-seen").exists()


def test_same_lesion_counts_when_the_sources_agree(run):
    # other bytes (e.g. another photo of the lesion), same lesion ids: only comparable within one id namespace
    other = restamp(shutil.copy(run["cache"], run["tmp"] / "relabelled.h5"), salt="e", source="isic2020")
    restamp(run["cache"], source="ham10000")
    try:
        r = evaluate_run(run["run"], other)
        assert r.overlap.excluded == 0 and not r.overlap.lesions_compared
        assert "sources ham10000 and isic2020" in r.overlap.message("relabelled.h5")
        restamp(other, source="isic2019")  # ISIC 2019's lesion_id column reuses HAM10000's lesion ids
        r = evaluate_run(run["run"], other, overwrite=True)
        leaked = ids_of(run, "train", "val")
        assert r.overlap.same_lesion == len(leaked) and r.overlap.same_bytes == 0
        assert r.metrics["n"] == len(ids_of(run, "test"))
        assert f"same bytes: 0, same lesion: {len(leaked)})" in r.overlap.message("relabelled.h5")
    finally:
        with h5py.File(run["cache"], "a") as f:
            del f.attrs["source"]


def test_external_baseline_is_the_training_majority_or_says_it_is_not(run):
    other = restamp(feature_cache(run["tmp"] / "skewed.h5", counts={"bcc": 20, "mel": 5, "nv": 5}, dim=16, seed=4),
                    salt="d")
    r = evaluate_run(run["run"], other)
    base = r.metrics["majority_baseline"]
    assert base["class"] == "nv" and base["accuracy"] == pytest.approx(5 / 30) and r.baseline_from == "training"
    saved = json.loads((r.out_dir / "metrics.json").read_text())
    assert saved["majority_baseline_from"] == "training"
    assert "most frequent class of the run's training split" in (r.out_dir / "report.md").read_text()

    moved = run["tmp"] / "moved.h5"
    shutil.move(run["cache"], moved)  # the run's training cache is gone: evaluate still runs, and says so
    try:
        out = run_cli("evaluate", run["run"], "--cache", other, "--overwrite")
    finally:
        shutil.move(moved, run["cache"])
    assert out.exit_code == 0, out.output
    assert "overlap of skewed.h5 with this run's training data could not be checked" in out.output
    saved = json.loads((r.out_dir / "metrics.json").read_text())
    assert saved["overlap_checked"] is False and saved["majority_baseline_from"] == "evaluated"
    assert saved["metrics"]["majority_baseline"]["class"] == "bcc" and saved["metrics"]["n"] == 30


def recomputed(predictions, class_names, split=None) -> tuple[float, float]:
    """Balanced accuracy and macro one-vs-rest ROC AUC from predictions.csv and the run's decision weights (its
    config.json) alone, with scikit-learn: predicted = argmax(p * decision weights)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    df = pd.read_csv(predictions, keep_default_na=False)
    if split is not None:
        df = df[df["split"] == split]
    y = df["true"].map({n: i for i, n in enumerate(class_names)}).to_numpy()
    p = df[[f"p_{n}" for n in class_names]].to_numpy()  # (N, C) float64, as written
    run = predictions.parent if (predictions.parent / "config.json").is_file() else predictions.parent.parent
    weights = json.loads((run / "config.json").read_text())["calibration"]["decision_weights"]
    pred = (p * np.asarray(weights)).argmax(axis=1)
    assert (df["predicted"].map({n: i for i, n in enumerate(class_names)}).to_numpy() == pred).all()
    return balanced_accuracy_score(y, pred), roc_auc_score(y, p, multi_class="ovr", average="macro")


def test_predictions_csv_recomputes_the_metrics_exactly(run):
    names = sorted(COUNTS)
    saved = json.loads((run["run"] / "metrics.json").read_text())["test"]
    bal, auc = recomputed(run["run"] / "predictions.csv", names, split="test")
    assert abs(bal - saved["balanced_accuracy"]) < 1e-12 and abs(auc - saved["roc_auc_macro"]) < 1e-12

    other = restamp(feature_cache(run["tmp"] / "exact.h5", counts={"bcc": 15, "mel": 15, "nv": 15}, dim=16, seed=5),
                    salt="c")
    r = evaluate_run(run["run"], other)
    bal, auc = recomputed(r.out_dir / "predictions.csv", names)
    assert abs(bal - r.metrics["balanced_accuracy"]) < 1e-12 and abs(auc - r.metrics["roc_auc_macro"]) < 1e-12
