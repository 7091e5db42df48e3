"""A fine-tuned run scored as a head run is: the same report sections and metrics.json keys, predictions.csv with the
decision rule and log-probabilities, calibration fitted on validation (or the record of why not) and an operating
point, both carried by predict and export; a step-level progress line with images/s. The session fixtures `ham_run`
and `tuned` live in conftest.py; `calibrated` is a fine-tune of a head run whose validation split is large enough to
fit a calibration on."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, make_ham
from sklearn.metrics import balanced_accuracy_score

from bottleneck.models.serve import export, predict
from bottleneck.stats import Calibration

NAMES = ["bkl", "mel", "nv"]


def headings(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("## ")]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """45 lesions x 2 images, vgg16 at 32 px (weights none: mobilenet_v2's are too small for a float16 cache), a
    head run holding 45% of the lesions out for validation (at least 30 images and 5 of each class: enough for
    `calibrate_on_validation` to try), and one fine-tune epoch of it with its progress shown (stderr is no terminal
    here: log lines)."""
    from bottleneck.extract import ExtractOptions, extract
    from bottleneck.heads import HeadConfig, SplitSpec
    from bottleneck.images import build_index
    from bottleneck.models import FineTuneOptions, fine_tune
    from bottleneck.runs import RunOptions, train_head_run

    tmp = tmp_path_factory.mktemp("calibrated")
    root = make_ham(tmp / "ham", n_lesions=45, images_per_lesion=2)
    extract(build_index(root), ExtractOptions(**TINY, cache=tmp / "c.h5", progress=False))
    train_head_run(tmp / "c.h5", HeadConfig(epochs=3, patience=2, hidden=(16,), standardize=False, dropout=0.0),
                   RunOptions(out=tmp / "run", split=SplitSpec(train=0.35, val=0.45, test=0.2), progress=False))
    with pytest.MonkeyPatch.context() as mp, _Stderr(mp) as err:
        r = fine_tune(tmp / "run", FineTuneOptions(out=tmp / "ft", epochs=1, batch_size=8, augment=False))
    return {"run": tmp / "run", "ft": r.run_dir, "root": root, "stderr": err.text, "tmp": tmp}


class _Stderr:
    """stderr captured into a buffer for the `with` block (a module fixture cannot use capsys): not a terminal, so
    progress comes as log lines."""

    def __init__(self, mp):
        self.mp, self.text = mp, ""

    def __enter__(self):
        import io
        import sys

        self.buffer = io.StringIO()
        self.mp.setattr(sys, "stderr", self.buffer)
        return self

    def __exit__(self, *exc):
        self.text = self.buffer.getvalue()
        return False


def test_a_fine_tuned_run_has_the_sections_and_figures_of_a_head_run(ham_run, tuned):
    run = tuned["result"].run_dir
    assert set(headings(ham_run["run"] / "report.md")) <= set(headings(run / "report.md"))
    report = (run / "report.md").read_text()
    assert "## Paired comparison with the head run" in report and "bottleneck compare" in report
    assert "head only (cached features)" in report and "fine-tuned (from images)" in report
    for name in ("roc.png", "calibration.png", "confusion.png", "curves.png"):
        assert (run / name).stat().st_size > 1000, name
    head = json.loads((ham_run["run"] / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(head) <= set(metrics) and "head_only" in metrics
    iv = metrics["test"]["intervals"]
    ba = iv["balanced_accuracy"]
    assert ba["lower"] <= metrics["test"]["balanced_accuracy"] == ba["value"] <= ba["upper"]
    assert metrics["operating_point"]["positive"] == "mel" and metrics["lesion_level"]["lesions"] > 0
    assert metrics["subgroups"]["columns"] and metrics["calibration"]["rule"]


def test_predictions_csv_recomputes_the_fine_tuned_metrics(tuned):
    run = tuned["result"].run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    df = pd.read_csv(run / "predictions.csv", keep_default_na=False, float_precision="round_trip")
    assert {f"logp_{n}" for n in NAMES} <= set(df.columns) and {"decision_rule", "most_probable"} <= set(df.columns)
    test = df[df["split"] == "test"]
    assert len(test) == metrics["test"]["n"]
    assert balanced_accuracy_score(test["true"], test["predicted"]) == pytest.approx(
        metrics["test"]["balanced_accuracy"])
    np.testing.assert_allclose(np.exp(test[[f"logp_{n}" for n in NAMES]].to_numpy()),
                               test[[f"p_{n}" for n in NAMES]].to_numpy(), rtol=1e-12)


def test_the_report_holds_the_paired_comparison_with_the_head_on_the_images_both_scored(ham_run, tuned):
    """The fine-tune left one unreadable test image out, so the comparison is on the test images both runs scored
    (--intersect, said), and its balanced-accuracy difference recomputes from the two runs' predictions.csv."""
    run = tuned["result"].run_dir
    paired = json.loads((run / "metrics.json").read_text())["paired_with_head"]
    assert paired["made"] and paired["rows"]["intersect"] is True
    assert paired["rows"]["left_out"] == {ham_run["run"].name: 1, run.name: 0}
    assert [r["kind"] for r in paired["runs"]] == ["head run", "fine-tune run"] and paired["runs"][1]["path"] == str(
        run)

    def test_rows(folder):
        df = pd.read_csv(folder / "predictions.csv", keep_default_na=False, dtype=str)
        return df[df["split"] == "test"].set_index("image_id")

    tuned_rows = test_rows(run)
    head_rows = test_rows(ham_run["run"]).loc[tuned_rows.index]
    d = paired["pairs"][0]["metrics"]["balanced_accuracy"]
    assert d["a"] == pytest.approx(balanced_accuracy_score(head_rows["true"], head_rows["predicted"]))
    assert d["b"] == pytest.approx(balanced_accuracy_score(tuned_rows["true"], tuned_rows["predicted"]))
    report = (run / "report.md").read_text()
    section = report.split("## Paired comparison with the head run")[1].split("\n## ")[0]
    assert "--intersect" in section and "balanced accuracy" in section and "Holm" in section


@pytest.mark.slow
def test_export_of_a_fine_tuned_run_carries_its_calibration_record_and_threshold(tuned, tmp_path):
    run = tuned["result"].run_dir
    config = json.loads((run / "config.json").read_text())
    # ham_run's validation split is 6 images: too few to fit a calibration on, and the record says so
    assert config["calibration"]["applied"] is False and "too few validation images" in config["calibration"]["reason"]
    assert config["operating_point"]["positive"] == "mel" and config["operating_point"]["threshold"] is not None
    export(run, "keras", out=tmp_path / "exp")
    labels = json.loads((tmp_path / "exp" / "labels.json").read_text())
    assert labels["calibration"] == config["calibration"]
    assert labels["operating_point"] == {"positive": "mel", "threshold": config["operating_point"]["threshold"]}
    frame = predict(run, [sorted(tuned["paths"]["val"])[0]]).frame
    assert frame["mel_threshold"].iloc[0] == config["operating_point"]["threshold"]


@pytest.mark.slow
def test_predict_applies_and_undoes_a_fine_tuned_runs_calibration(tuned, tmp_path):
    """A fine-tune run whose config records an applied calibration (folded into model.keras, as `score_images` does):
    predict serves the calibrated probabilities, and --no-calibrate the model's own."""
    import shutil

    import keras

    from bottleneck.heads import fold_calibration

    run = shutil.copytree(tuned["result"].run_dir, tmp_path / "ft")
    cal = Calibration(2.0, (0.1, -0.2, 0.1), (1.0, 1.0, 1.0))
    model = keras.saving.load_model(run / "model.keras")
    fold_calibration(model, cal)
    model.save(run / "model.keras")
    config = json.loads((run / "config.json").read_text())
    config["calibration"] = cal.record()
    (run / "config.json").write_text(json.dumps(config))
    img = sorted(tuned["paths"]["val"])[0]
    own = predict(run, [img], calibrate=False).frame[[f"p_{n}" for n in NAMES]].to_numpy()
    served = predict(run, [img]).frame[[f"p_{n}" for n in NAMES]].to_numpy()
    np.testing.assert_allclose(served, cal.apply(own), atol=1e-5)
    assert np.abs(served - own).max() > 1e-3


@pytest.mark.slow
def test_a_large_validation_split_gets_a_calibration_or_the_reason_and_predict_serves_the_report(calibrated,
                                                                                                tmp_path):
    ft = calibrated["ft"]
    config = json.loads((ft / "config.json").read_text())
    cal = config["calibration"]
    assert cal["val_images"] >= 30 and min(cal["val_per_class"].values()) >= 5
    # the small-data rules let it be tried: cross-fitted on validation, applied only where it lowers the NLL
    assert "cross_fit" in cal and (cal["applied"] or "did not help on validation" in cal["reason"])
    export(ft, "keras", out=tmp_path / "exp")
    assert json.loads((tmp_path / "exp" / "labels.json").read_text())["calibration"] == cal
    df = pd.read_csv(ft / "predictions.csv", keep_default_na=False, float_precision="round_trip")
    rows = df[df["split"] == "val"].head(4)
    served = predict(ft, [calibrated["root"] / p for p in rows["path"]]).frame
    np.testing.assert_allclose(served[[f"p_{n}" for n in NAMES]].to_numpy(),
                               rows[[f"p_{n}" for n in NAMES]].to_numpy(), atol=1e-5)
    assert list(served["predicted"]) == list(rows["predicted"])


def test_fine_tune_shows_a_step_level_progress_line_with_images_per_second(calibrated):
    lines = calibrated["stderr"].splitlines()
    training = [line for line in lines if line.startswith("fine-tune: ") and "evaluation" not in line]
    assert training and "\r" not in calibrated["stderr"]
    # the whole run's images (1 epoch of the training split), its rate and the time left
    assert re.search(r"fine-tune: (\d+)/\1 img \(100%\).*img/s", training[-1]), training[-1]
    assert any(line.startswith("fine-tune: evaluation: ") and "img/s" in line for line in lines)
