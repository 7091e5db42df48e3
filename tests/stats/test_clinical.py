"""Figures a clinician can defend: the operating point, subgroup helpers, and the whole report (intervals,
operating point, calibration, lesion-level results, subgroups and warnings) from real train-head, evaluate and
predict runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, run_cli
from PIL import Image

from bottleneck.errors import InputError
from bottleneck.stats.calibration import Calibration
from bottleneck.stats.clinical import age_band, binary_rates, choose_threshold, parse_subgroups, subgroup_table
from bottleneck.stats.metrics import decide

# --- operating point, subgroups -----------------------------------------------------------------------------------

def test_threshold_reaches_the_target_on_validation():
    y = np.r_[np.ones(20, int), np.zeros(30, int)]
    score = np.r_[np.linspace(0.05, 0.95, 20), np.linspace(0.0, 0.5, 30)]
    t = choose_threshold(y, score, 1, 0.95)
    flagged = score >= t
    assert flagged[y == 1].mean() >= 0.95 and t == pytest.approx(np.sort(score[:20])[1])  # 19 of 20, no lower
    assert choose_threshold(y, score, 1, 1.0) == pytest.approx(0.05)
    assert choose_threshold(np.zeros(5, int), score[:5], 1, 0.95) is None
    rates = binary_rates(y, flagged, 1)
    assert rates["sensitivity"] == 0.95 and rates["ppv"] == pytest.approx(19 / flagged.sum())


def test_subgroup_helpers():
    assert [age_band(v) for v in ("25", "30.0", "49", "50", "69.9", "70", "85", "", "n/a", "-5")] == \
        ["<30", "30-49", "30-49", "50-69", "50-69", "70+", "70+", "unknown", "unknown", "unknown"]
    assert parse_subgroups(None) is None and parse_subgroups("none") == () and parse_subgroups("sex, age") == \
        ("sex", "age")
    with pytest.raises(InputError, match="--subgroups"):
        parse_subgroups(" , ")


def test_subgroup_rows_compare_like_with_like():
    """A subgroup holding one class of three ("genital") gets no balanced accuracy, its missing classes named (a mean
    over the one class it holds would be another quantity than the others' mean over three); each row gives each
    present class's recall with its count, and the positive class's sensitivity and specificity as flagged."""
    from bottleneck.runs.report import subgroup_section

    site = np.array(["back"] * 9 + ["genital"] * 3)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    pred = np.array([0, 0, 2, 1, 1, 2, 2, 2, 1, 2, 1, 2])
    rows = subgroup_table("localization", site, y, pred, pred == 1, np.array([f"L{k}" for k in range(12)]), 1,
                          seed=0, resamples=200, class_names=["bcc", "mel", "nv"])
    back, genital = rows
    assert back["missing_classes"] == [] and back["balanced_accuracy"]["value"] == pytest.approx(2 / 3)
    assert {n: r["value"] for n, r in back["recall"].items()} == pytest.approx({"bcc": 2 / 3, "mel": 2 / 3,
                                                                                 "nv": 2 / 3})
    assert back["sensitivity"]["value"] == pytest.approx(2 / 3) and back["specificity"]["value"] == pytest.approx(5 / 6)
    assert genital["balanced_accuracy"] is None and genital["missing_classes"] == ["bcc", "mel"]
    assert genital["per_class"] == {"bcc": 0, "mel": 0, "nv": 3} and list(genital["recall"]) == ["nv"]
    assert genital["recall"]["nv"]["value"] == pytest.approx(2 / 3) and genital["sensitivity"] is None
    assert genital["specificity"]["value"] == pytest.approx(2 / 3) and genital["positives"] == 0
    text = "\n".join(subgroup_section({"positive": "mel", "subgroups": {
        "columns": ["localization"], "at": "operating point", "tables": {"localization": rows}}}))
    assert "| genital | 3 | 3 | 0 (0) | - |" in text and "| - (no bcc, mel) |" in text
    assert "| genital | - | - | 0.667 (" in text and ", n=3 |" in text  # recall by class: nv only


# --- real runs ----------------------------------------------------------------------------------------------------

FAST = ["--epochs", "6", "--patience", "3", "--quiet"]


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clinical")
    cache = feature_cache(tmp / "c.h5", counts={"bcc": 60, "mel": 80, "nv": 160}, separation=0.5)
    r = run_cli("train-head", cache, "--out", tmp / "run", *FAST)
    assert r.exit_code == 0, r.output
    return {"cache": cache, "run": tmp / "run", "tmp": tmp}


def test_train_head_reports_intervals_operating_point_calibration_and_lesions(clinical_run):
    d = clinical_run["run"]
    m = json.loads((d / "metrics.json").read_text())
    config = json.loads((d / "config.json").read_text())
    iv = m["test"]["intervals"]
    assert m["bootstrap"]["resamples"] == 1000 and m["bootstrap"]["unit"].startswith("lesion")
    assert m["bootstrap"]["units"] == config["split"]["sizes"]["test"]["groups"]
    for key in ("balanced_accuracy", "roc_auc_macro", "sensitivity", "specificity"):
        assert iv[key]["lower"] <= iv[key]["value"] <= iv[key]["upper"], key
    assert iv["balanced_accuracy"]["value"] == m["test"]["balanced_accuracy"] and set(iv["recall"]) == \
        {"bcc", "mel", "nv"}

    op = m["operating_point"]
    assert op["positive"] == m["positive"] == "mel" and op["chosen_on"] == "val"
    assert op["val"]["sensitivity"] >= 0.95 and set(op["test"]) == {"sensitivity", "specificity", "ppv", "npv"}
    preds = pd.read_csv(d / "predictions.csv", keep_default_na=False)
    test = preds[preds.split == "test"]
    flagged = test["p_mel"] >= op["threshold"]
    assert op["test"]["sensitivity"]["value"] == pytest.approx(flagged[test["true"] == "mel"].mean())
    assert config["operating_point"]["threshold"] == op["threshold"]

    cal = m["calibration"]
    assert cal["applied"] and cal["temperature"] > 0 and cal["fitted_on"] == "val"
    assert {"ece_before", "ece_after", "brier_before", "brier_after"} <= set(cal["test"])
    assert config["calibration"]["temperature"] == cal["temperature"]
    # predictions.csv holds the calibrated probabilities; its predicted column is the decision rule's
    names = ["bcc", "mel", "nv"]
    p = test[[f"p_{n}" for n in names]].to_numpy()
    assert (test["predicted"] == [names[k] for k in decide(p, cal["decision_weights"])]).all()
    assert (test["true"] == test["predicted"]).mean() == pytest.approx(m["test"]["accuracy"])

    lesions = m["lesion_level"]
    assert lesions["lesions"] == config["split"]["sizes"]["test"]["groups"] == lesions["metrics"]["n"]
    assert "balanced_accuracy" in lesions["metrics"]["intervals"]
    assert m["subgroups"]["columns"] == [] and "--metadata" in m["subgroups"]["note"]

    for png in ("calibration.png", "roc.png"):
        assert Image.open(d / png).size[0] > 100
    report = (d / "report.md").read_text()
    b = iv["balanced_accuracy"]
    assert f"{b['value']:.3f} ({b['lower']:.3f}-{b['upper']:.3f})" in report
    for section in ("## Operating point", "## Calibration", "## Lesion-level results", "## Limitations"):
        assert section in report, section


def test_the_saved_head_gives_the_calibrated_probabilities_and_evaluate_agrees(clinical_run):
    from bottleneck.cache.store import load_cache
    from bottleneck.runs.directory import load_run

    d = clinical_run["run"]
    preds = pd.read_csv(d / "predictions.csv", keep_default_na=False)
    data = load_cache(clinical_run["cache"])
    rows = [list(data.image_ids).index(i) for i in preds["image_id"]]
    cols = ["p_bcc", "p_mel", "p_nv"]
    _, head = load_run(d)
    np.testing.assert_allclose(head.predict(data.features[rows], verbose=0), preds[cols], atol=1e-4)
    config, raw_head = load_run(d, calibrate=False)
    raw = raw_head.predict(data.features[rows], verbose=0)
    np.testing.assert_allclose(Calibration.from_record(config["calibration"]).apply(raw), preds[cols], atol=1e-4)
    assert (raw.argmax(1) == np.array([cols.index(f"p_{n}") for n in preds["predicted"]])).all()

    m = json.loads((d / "metrics.json").read_text())["test"]
    assert run_cli("evaluate", d).exit_code == 0
    ev = json.loads((d / "eval-test" / "metrics.json").read_text())
    assert ev["decision_rule"]["calibrated"] and ev["metrics"]["balanced_accuracy"] == pytest.approx(
        m["balanced_accuracy"])
    assert ev["metrics"]["intervals"]["balanced_accuracy"]["lower"] is not None
    assert ev["operating_point"]["threshold"] == config["operating_point"]["threshold"]
    assert run_cli("evaluate", d, "--no-calibrate").exit_code == 0  # beside eval-test, not over it
    ev = json.loads((d / "eval-test-nocal" / "metrics.json").read_text())
    assert not ev["decision_rule"]["calibrated"]
    assert ev["operating_point"]["threshold"] == config["operating_point"]["threshold_uncalibrated"]
    assert ev["metrics"]["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])  # same decisions
    ev_preds = pd.read_csv(d / "eval-test-nocal" / "predictions.csv")
    np.testing.assert_allclose(ev_preds[cols], raw[preds.split == "test"], atol=1e-4)


@pytest.mark.slow
def test_no_calibrate_positive_and_target(clinical_run):
    tmp = clinical_run["tmp"]
    r = run_cli("train-head", clinical_run["cache"], "--out", tmp / "plain", "--no-calibrate", "--positive", "bcc",
                "--target-sensitivity", "0.8", "--subgroups", "none", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp / "plain" / "metrics.json").read_text())
    assert not m["calibration"]["applied"] and "--no-calibrate" in m["calibration"]["reason"]
    assert "ece_after" not in m["calibration"]["test"]
    assert m["positive"] == m["operating_point"]["positive"] == m["test"]["positive"]["class"] == "bcc"
    assert m["operating_point"]["target_sensitivity"] == 0.8 and m["operating_point"]["val"]["sensitivity"] >= 0.8
    assert m["subgroups"]["columns"] == [] and "note" not in m["subgroups"]
    command = json.loads((tmp / "plain" / "config.json").read_text())["command"]
    assert "--no-calibrate" in command and command[command.index("--positive") + 1] == "bcc"


@pytest.mark.parametrize("args, message", [
    (["--positive", "scc"], "--positive 'scc' is not a class of this run; pass one of bcc, mel, nv"),
    (["--target-sensitivity", "1.5"], "--target-sensitivity should be in (0, 1]"),
    (["--subgroups", "sex"], "--subgroups sex: no such metadata column in the cache"),
])
def test_bad_clinical_options_are_refused_and_write_nothing(clinical_run, args, message):
    out = clinical_run["tmp"] / "bad"
    r = run_cli("train-head", clinical_run["cache"], "--out", out, *args, *FAST)
    assert r.exit_code == 1 and message in r.output and not out.exists()


@pytest.mark.slow
def test_small_classes_and_few_test_lesions_are_warned(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts={"bcc": 20, "mel": 40, "nv": 60}, images_per_group=4)
    r = run_cli("train-head", cache, "--out", tmp_path / "run", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("test split: bcc has" in w and "under 10" in w for w in m["warnings"])
    assert any("lesions (groups) (under 30)" in w for w in m["warnings"])
    assert m["small_numbers"] and all(w in m["warnings"] for w in m["small_numbers"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Small numbers: test split: bcc has" in report
    assert "warning: test split: bcc has" in r.output


@pytest.mark.slow
def test_predict_and_export_carry_the_operating_point(ham_run, tmp_path):
    config = json.loads((ham_run["run"] / "config.json").read_text())
    op = config["operating_point"]
    images = sorted(ham_run["root"].rglob("*.jpg"))[:4]
    r = run_cli("predict", ham_run["run"], *images, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    p = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert op["positive"] == "mel" and op["threshold"] is not None  # the fixture's val split has a mel lesion
    assert (p["mel_threshold"] == op["threshold"]).all()
    assert (p["mel_at_threshold"].astype(str) == (p["p_mel"] >= op["threshold"]).astype(str)).all()
    flagged = int((p["p_mel"] >= op["threshold"]).sum())
    assert f"{flagged} of 4 images flagged (column mel_at_threshold)" in r.output
    # The fixture's 6 validation images are too few to calibrate on: the run keeps the head's own probabilities,
    # so --no-calibrate changes nothing, and the export's labels.json carries the run's record of the skip.
    assert not config["calibration"]["applied"] and "too few validation images" in config["calibration"]["reason"]
    r = run_cli("predict", ham_run["run"], *images, "--out", tmp_path / "raw.csv", "--no-calibrate")
    assert r.exit_code == 0, r.output
    raw = pd.read_csv(tmp_path / "raw.csv", keep_default_na=False)
    cols = [c for c in p.columns if c.startswith("p_")]
    np.testing.assert_allclose(raw[cols], p[cols], atol=1e-6)
    assert (raw["predicted"] == p["predicted"]).all() and (raw["mel_threshold"] == op["threshold"]).all()
    r = run_cli("export", ham_run["run"], "--out", tmp_path / "exp")
    assert r.exit_code == 0, r.output
    labels = json.loads((tmp_path / "exp" / "labels.json").read_text())
    assert labels["calibration"] == config["calibration"] and labels["operating_point"]["threshold"] == op["threshold"]
    r = run_cli("predict", tmp_path / "exp" / "model.keras", *images, "--out", tmp_path / "exp.csv")
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(pd.read_csv(tmp_path / "exp.csv")[cols], raw[cols], atol=1e-4)


# --- sweep: the winner rule ----------------------------------------------------------------------------------------

def _row(id_, score, std, hidden):
    return {"id": id_, "score": score, "std": std, "hidden": hidden}


def test_sweep_winner_is_the_simplest_head_within_one_std_of_the_best():
    from bottleneck.runs.leaderboard import choose_winner, head_size

    assert head_size(_row("a", 0, 0, "512,512")) == (1024, 2) and head_size(_row("b", 0, 0, "")) == (0, 0)
    rows = [_row("big", 0.80, 0.03, "1024,512"), _row("mid", 0.79, 0.02, "512,512"),
            _row("small", 0.775, 0.04, "256"), _row("linear", 0.70, 0.01, "")]
    winner, how = choose_winner(rows, "balanced_accuracy")
    assert winner == "small" and "3 configurations within one standard deviation" in how and "(mean >= 0.770)" in how
    rows[2]["score"] = 0.76  # now outside 0.80 - 0.03: the next simplest tied head wins
    assert choose_winner(rows, "balanced_accuracy")[0] == "mid"
    no_spread = [_row("big", 0.80, None, "1024"), _row("small", 0.799, None, "8")]
    assert choose_winner(no_spread, "balanced_accuracy")[0] == "big"  # one split: no spread to call a tie



# --- the whole flow on a HAM10000-layout dataset -------------------------------------------------------------------

@pytest.mark.slow
def test_ham10000_layout_report_has_every_figure_and_a_subgroup_table(tmp_path):
    """Images and HAM10000_metadata.csv -> extract (metadata stored in the cache) -> default train-head: intervals,
    operating point, calibration, lesion-level results, subgroups by sex, age band and localization."""
    from conftest import TINY_ARGS, write_image

    root = tmp_path / "ham"
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    sites, k = ("back", "face", "acral"), 0
    for les in range(48):
        for _ in range(2):
            image_id = f"ISIC_{k:07d}"
            write_image(root / "HAM10000_images_part_1" / f"{image_id}.jpg", seed=k % 96)
            age = "" if les % 11 == 0 else str(20 + 15 * (les % 5))
            lines.append(f"HAM_{les:07d},{image_id},{('mel', 'nv', 'bkl')[les % 3]},histo,{age},"
                         f"{('male', 'female')[les % 2]},{sites[les % 4 % 3]}")  # not the dx's function
            k += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    cache = tmp_path / "ham.h5"
    r = run_cli("extract", root, "--cache", cache, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    r = run_cli("train-head", cache, "--out", tmp_path / "run", *FAST)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    sub = m["subgroups"]
    assert sub["columns"] == ["sex", "age", "localization"]
    ages = [row["value"] for row in sub["tables"]["age"]]
    assert set(ages) <= {"<30", "30-49", "50-69", "70+", "unknown"} and len(ages) >= 3
    sexes = {row["value"]: row for row in sub["tables"]["sex"]}
    assert set(sexes) == {"female", "male"} and sum(r["images"] for r in sexes.values()) == m["test"]["n"]
    for row in sub["tables"]["localization"]:
        assert {"images", "lesions", "positives", "balanced_accuracy", "sensitivity", "specificity",
                "recall"} <= set(row)
        assert (row["balanced_accuracy"] is None) == bool(row["missing_classes"])  # only over every class
        assert set(row["recall"]) == {n for n, k in row["per_class"].items() if k}
    assert m["lesion_level"]["lesions"] == m["bootstrap"]["units"]
    assert m["operating_point"]["positive"] == "mel"
    report = (tmp_path / "run" / "report.md").read_text()
    for section in ("## Operating point", "## Calibration", "## Lesion-level results", "## Subgroups",
                    "| sex | images |", "| age | images |", "| localization | images |", "## Limitations"):
        assert section in report, section
