"""evaluate: a head run on its own test split (matching what train-head reported) or on an external cache,
classes mapped by name; other backbone configurations and unknown runs refused; each evaluation in a folder of its
own that nothing replaces without --overwrite, and an external one with train-head's figures and subgroup table."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import copy_run, feature_cache, file_digest, run_cli

from bottleneck.cache.store import load_cache
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import BottleneckError, CacheMismatchError
from bottleneck.heads.class_map import resolve
from bottleneck.runs.evaluate import by_name, eval_dir, evaluate_run
from bottleneck.stats.calibration import Calibration, expected_calibration_error


@pytest.mark.slow
def test_cli_train_head_prints_the_table_and_evaluate_matches(tmp_path):
    cache, out = feature_cache(tmp_path / "feat.h5"), tmp_path / "run"
    r = run_cli("train-head", cache, "--out", out, "--epochs", "10", "--quiet")
    assert r.exit_code == 0, r.output
    assert "balanced" in r.output and str(out) in r.output
    r = run_cli("evaluate", out)
    assert r.exit_code == 0, r.output
    own = json.loads((out / "metrics.json").read_text())["test"]
    ev = json.loads((out / "eval-test" / "metrics.json").read_text())["metrics"]
    assert ev["balanced_accuracy"] == pytest.approx(own["balanced_accuracy"])
    assert ev["confusion_matrix"] == own["confusion_matrix"]


def test_evaluate_on_an_external_cache_maps_classes_by_name(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)  # evaluate writes eval-other/ into it
    # same backbone configuration, class names in another case and order, one class the run never saw
    other = feature_cache(tmp_path / "other.h5", counts={"MEL": 10, "NV": 10, "vasc": 4}, seed=9)
    with h5py.File(other, "a") as f:  # other images: synthetic caches number their SHA-256s and ids alike
        f["sha256"][:] = np.array([f"e{k:063x}" for k in range(len(f["sha256"]))], dtype=object)
        f["image_id"][:] = np.array([f"e{k}" for k in range(len(f["image_id"]))], dtype=object)
    r = evaluate_run(run, other)
    assert r.external and r.unmapped == {"vasc": 4}
    assert r.metrics["n"] == 20
    saved = json.loads((run / "eval-other" / "metrics.json").read_text())
    assert saved["unmapped_classes"] == {"vasc": 4}


def test_evaluate_refuses_another_backbone_and_unknown_runs(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)
    other = feature_cache(tmp_path / "other.h5", backbone="resnet50")
    with pytest.raises(CacheMismatchError, match=r"backbone resnet50 \(other.h5\) vs vgg16 \(run\)"):
        evaluate_run(run, other)
    r = run_cli("evaluate", tmp_path / "nope")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_classes_map_by_exact_name_then_case_insensitively():
    m = resolve(by_name(["mel", "nv", "MEL"]), ["MEL", "Nv", "vasc", "mel"], np.array([1, 2, 3, 4]), strict=False)
    assert m.index.tolist() == [2, 1, -1, 0]  # an exact match wins over a case-folded one
    assert m.record["dropped"] == {"vasc": 3} and m.record["counts"] == {"mel": 4, "nv": 2, "MEL": 1}
    assert resolve(by_name(["a"]), [], np.zeros(0), strict=False).index.tolist() == []


# --- where an evaluation goes ---------------------------------------------------------------------------------------

def digest(folder: Path) -> dict:
    return {p.name: file_digest(p) for p in sorted(folder.iterdir())}


def test_default_folders_are_named_by_data_and_options():
    assert eval_dir(Path("r"), "test", False, True) == Path("r/eval-test")
    assert eval_dir(Path("r"), "ph2", True, False) == Path("r/eval-ph2-tta-nocal")


def test_two_evaluates_of_one_run_keep_both_and_the_same_again_needs_overwrite(tmp_path, synth_run):
    """The issue's case: `evaluate RUN --no-calibrate` replaced the calibrated evaluation without a word."""
    run = copy_run(synth_run["run"], tmp_path)
    assert run_cli("evaluate", run).exit_code == 0
    r = run_cli("evaluate", run, "--no-calibrate")
    assert r.exit_code == 0, r.output
    assert f"written: {run / 'eval-test-nocal'}" in r.output
    calibrated = json.loads((run / "config.json").read_text())["calibration"].get("applied", False)
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["decision_rule"]["calibrated"] == calibrated
    assert not json.loads((run / "eval-test-nocal" / "metrics.json").read_text())["decision_rule"]["calibrated"]
    before = digest(run / "eval-test")
    r = run_cli("evaluate", run)  # the same evaluation again: refused, nothing touched
    assert r.exit_code == 1
    assert f"evaluation {run / 'eval-test'} already exists" in r.output and "--overwrite" in r.output
    assert digest(run / "eval-test") == before
    (run / "eval-test" / "report.md").write_text("stale")
    assert run_cli("evaluate", run, "--overwrite").exit_code == 0
    assert (run / "eval-test" / "report.md").read_text().startswith("# Evaluation `eval-test`")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".eval", "eval"))) == ["eval-test",
                                                                                             "eval-test-nocal"]


def test_out_writes_where_asked_and_never_over_a_run_or_other_files(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)
    out = tmp_path / "evals" / "calibrated"
    r = evaluate_run(run, out=out)
    assert r.out_dir == out and (out / "roc.png").is_file() and not (run / "eval-test").exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["out"] == str(out.resolve()) and saved["run"] == str(run.resolve())
    run_before = digest(run)
    for target, message in ((run, "would replace"), (tmp_path, "would replace"), (synth_run["cache"], "would replace")):
        with pytest.raises(BottleneckError, match=message):
            evaluate_run(run, out=target, overwrite=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    with pytest.raises(BottleneckError, match="exists and is not an evaluation"):
        evaluate_run(run, out=other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "mine" and digest(run) == run_before


def test_a_failed_evaluate_leaves_the_older_one_intact(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)
    evaluate_run(run)
    before = digest(run / "eval-test")
    wrong = feature_cache(tmp_path / "wrong.h5", backbone="resnet50")
    with pytest.raises(CacheMismatchError):
        evaluate_run(run, wrong, out=run / "eval-test", overwrite=True)
    (run / ".eval-test.tmp").write_text("")  # the staging folder cannot be made: writing fails at the very end
    with pytest.raises(BottleneckError, match="nothing older was lost"):
        evaluate_run(run, overwrite=True)
    assert digest(run / "eval-test") == before


# --- an external evaluation gets train-head's figures -------------------------------------------------------------

def with_metadata(src: Path, dst: Path) -> Path:
    """A copy of a feature cache (other bytes) with sex and body-site columns, written through the cache writer."""
    d = load_cache(src)
    sites = ("back", "face", "lower extremity")
    rows = [dict(image_id=f"ext{k:04d}", path=f"ext{k:04d}.jpg", label=d.class_names[d.labels[k]],
                 group=f"E{d.groups[k]}", sha256=f"e{k:063x}", width=40, height=30,
                 meta={"sex": ("female", "male")[k % 2], "localization": sites[k % 3]})
            for k in range(len(d.labels))]
    with CacheWriter(dst, d.config, {"dataset": "external"}, tuple(d.class_names)) as w:
        w.write_batch(rows, np.asarray(d.features, dtype=np.float32))
    return dst


def test_an_external_evaluation_draws_roc_reliability_and_subgroups(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)
    ext = with_metadata(feature_cache(tmp_path / "src.h5", counts={"bcc": 12, "mel": 12, "nv": 18}, seed=9),
                        tmp_path / "clinic.h5")
    r = run_cli("evaluate", run, "--cache", ext)
    assert r.exit_code == 0, r.output
    out = run / "eval-clinic"
    assert {"roc.png", "calibration.png", "confusion.png"} <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "metrics.json").read_text())
    sub = saved["subgroups"]
    assert sub["columns"] == ["sex", "localization"]
    assert {row["value"]: row["images"] for row in sub["tables"]["sex"]} == {"female": 21, "male": 21}
    assert sum(row["images"] for row in sub["tables"]["localization"]) == saved["metrics"]["n"] == 42
    report = (out / "report.md").read_text()
    assert "## Subgroups" in report and "| lower extremity |" in report
    assert "![reliability diagram](calibration.png)" in report and "(roc.png)" in report
    # the reliability figures recompute from predictions.csv (and the run's calibration, undone for "before")
    preds = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    names = ["bcc", "mel", "nv"]
    p, y = preds[[f"p_{n}" for n in names]].to_numpy(), preds["true"].map(names.index).to_numpy()
    cal = Calibration.from_record(json.loads((run / "config.json").read_text())["calibration"])
    head_own = cal.undo(p) if cal else p
    assert saved["calibration"]["ece_before"] == pytest.approx(expected_calibration_error(y, head_own), abs=1e-9)
    if cal:
        assert saved["calibration"]["ece_after"] == pytest.approx(expected_calibration_error(y, p), abs=1e-12)


def test_an_external_set_of_one_class_has_no_roc_and_says_so(tmp_path, synth_run):
    run = copy_run(synth_run["run"], tmp_path)
    only_mel = feature_cache(tmp_path / "mel.h5", counts={"mel": 6}, seed=9)
    with h5py.File(only_mel, "a") as f:  # other images: other bytes, ids and (seed) features
        f["sha256"][:] = np.array([f"e{k:063x}" for k in range(len(f["sha256"]))], dtype=object)
        f["image_id"][:] = np.array([f"e{k}" for k in range(len(f["image_id"]))], dtype=object)
    r = evaluate_run(run, only_mel)
    assert not (r.out_dir / "roc.png").exists() and (r.out_dir / "calibration.png").is_file()
    assert json.loads((r.out_dir / "metrics.json").read_text())["figures"] == ["confusion.png", "calibration.png"]
    assert "No ROC curve: these images hold a single class." in (r.out_dir / "report.md").read_text()


def flat(record, prefix="") -> dict:
    """A nested JSON record as {"a/b/0": leaf}."""
    items = record.items() if isinstance(record, dict) else enumerate(record) if isinstance(record, list) else None
    if items is None:
        return {prefix: record}
    return {k: v for key, value in items for k, v in flat(value, f"{prefix}/{key}").items()}


def test_the_numpy_head_gives_the_metrics_train_head_computed_with_keras(tmp_path, synth_run):
    """evaluate applies head.keras with numpy (heads/dense.py): the same metrics as train-head's own on the test split
    (computed there by the Keras model it saved), and the Keras head's log-probabilities in predictions.csv."""
    from bottleneck.heads.model import predict_log_proba
    from bottleneck.runs.directory import load_run

    run = copy_run(synth_run["run"], tmp_path)
    r = evaluate_run(run)
    trained = json.loads((run / "metrics.json").read_text())["test"]
    saved = json.loads((r.out_dir / "metrics.json").read_text())["metrics"]
    assert flat(saved).keys() == flat(trained).keys() and flat(saved) == pytest.approx(flat(trained), abs=1e-9)

    preds = pd.read_csv(r.out_dir / "predictions.csv", keep_default_na=False, float_precision="round_trip")
    data = load_cache(synth_run["cache"])
    rows = [list(data.image_ids).index(i) for i in preds["image_id"]]
    _, keras_head = load_run(run, keras=True)
    logp = preds[[f"logp_{n}" for n in ("bcc", "mel", "nv")]].to_numpy()
    np.testing.assert_allclose(logp, predict_log_proba(keras_head, data.features[rows]), atol=1e-5, rtol=1e-6)
