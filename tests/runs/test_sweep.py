"""Sweeps: scores that never read the scored rows' labels, resumption, a sweep directory bound to its protocol, and a
test split that selection never sees. (The grid is tested in test_grid.py, the CV folds in test_splits.py.)"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache
from typer.testing import CliRunner

from bottleneck.cache.store import load_cache
from bottleneck.cli import app
from bottleneck.errors import InputError
from bottleneck.heads.model import HeadConfig
from bottleneck.heads.splits import SplitSpec, cv_parts, make_folds
from bottleneck.runs.grid import expand_grid
from bottleneck.runs.splitting import resolve_split
from bottleneck.runs.sweep import SweepOptions, _bind, fit_part, run_sweep

runner = CliRunner()
SMALL = dict(epochs=[6], patience=[3])


@pytest.fixture
def cache(tmp_path):
    return feature_cache(tmp_path / "feat.h5", images_per_group=3)


@pytest.mark.slow
def test_a_val_split_score_does_not_depend_on_the_val_labels(cache):
    """--folds 0 scores the val split: the head trained for it is the same whatever val's labels are."""
    data = load_cache(cache)
    split, _, _ = resolve_split(data, SplitSpec(), None)
    part = cv_parts(data, split, None, seed=0)[0]
    other = data.labels.copy()
    other[part[2]] = (other[part[2]] + 1) % 3
    cfg = HeadConfig(hidden=(16,), epochs=6, patience=2, batch_size=32)
    right, proba = fit_part(data.features, data.labels, part, 3, cfg)
    wrong, proba_wrong = fit_part(data.features, other, part, 3, cfg)
    assert right.best_epoch == wrong.best_epoch
    np.testing.assert_array_equal(proba, proba_wrong)


@pytest.mark.slow
def test_a_fold_score_does_not_depend_on_the_scored_folds_labels(cache):
    """Train one fold twice, the second time with every label of the scored fold changed: the head (and so its
    predictions on that fold) must be the same. Early-stopping on the scored fold, as sweeps once did, fails it."""
    data = load_cache(cache)
    split, _, _ = resolve_split(data, SplitSpec(), None)
    folds = make_folds(data, split, 3, seed=0)
    fit, stop, held = cv_parts(data, split, folds, seed=0)[0]
    other = data.labels.copy()
    other[held] = (other[held] + 1) % 3  # every scored label wrong
    cfg = HeadConfig(hidden=(16,), epochs=6, patience=2, batch_size=32)
    x = data.features
    true_run, proba = fit_part(x, data.labels, (fit, stop, held), 3, cfg)
    wrong_run, proba_wrong = fit_part(x, other, (fit, stop, held), 3, cfg)
    assert true_run.best_epoch == wrong_run.best_epoch
    np.testing.assert_array_equal(proba, proba_wrong)
    # The old protocol (early stopping on the scored fold) reads those labels: its heads differ.
    _, old = fit_part(x, data.labels, (np.r_[fit, stop], held, held), 3, cfg)
    _, old_wrong = fit_part(x, other, (np.r_[fit, stop], held, held), 3, cfg)
    assert not np.allclose(old, old_wrong)


def test_a_cv_sweep_made_before_inner_early_stopping_is_refused(tmp_path, cache):
    data = load_cache(cache)
    out = tmp_path / "sweep"
    _bind(out, data, SweepOptions(out=out, folds=2))
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["cv_early_stopping"] == "grouped 0.15 of the training folds"
    _bind(tmp_path / "val", data, SweepOptions(out=tmp_path / "val", folds=0))
    assert json.loads((tmp_path / "val" / "sweep.json").read_text())["cv_early_stopping"] == \
        "grouped 0.15 of the training split"
    del meta["cv_early_stopping"]  # as a sweep directory of the old protocol reads
    (out / "sweep.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="another cv_early_stopping"):
        _bind(out, data, SweepOptions(out=out, folds=2))


@pytest.mark.slow
def test_sweep_resumes_and_leaves_a_best_run(tmp_path, cache):
    out = tmp_path / "sweep"
    configs = expand_grid({"lr": [1e-3, 3e-4], **SMALL})
    r = run_sweep(cache, configs, SweepOptions(out=out, progress=False))
    assert (r.computed, r.skipped) == (3, 0)  # and the linear baseline
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["rank"]) == [1, 2, 3] and board["balanced_accuracy"].is_monotonic_decreasing
    assert board["baseline"].sum() == 1 and (board.loc[board["baseline"], "hidden"] == "linear").all()
    assert all((out / "configs" / i / "result.json").is_file() for i in board["id"])
    assert "linear (baseline)" in (out / "leaderboard.md").read_text()
    candidates = board[~board["baseline"]]
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["sweep_config_id"] == candidates["id"].iloc[0] and best["sweep_config_id"] == r.winner
    # the winner is a full run: trained on train, early-stopped and calibrated on val, as train-head does
    assert best["trained_on"] == "train" and best["head"]["epochs"] == SMALL["epochs"][0]
    best_metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert {"val", "test", "train"} <= set(best_metrics)
    assert "reason" in best_metrics["calibration"] or best_metrics["calibration"]["applied"]
    assert "val" not in best_metrics["calibration"].get("reason", "") or "train+val" not in \
        best_metrics["calibration"]["reason"]
    assert (out / "best" / "report.md").is_file() and (out / "best" / "head.keras").is_file()
    best_mtime = (out / "best" / "head.keras").stat().st_mtime

    again = run_sweep(cache, configs, SweepOptions(out=out, progress=False))
    assert (again.computed, again.skipped) == (0, 3)
    assert (out / "best" / "head.keras").stat().st_mtime == best_mtime  # nothing retrained
    # an interrupted sweep: the config in flight never wrote result.json, so only it runs again
    (out / "configs" / candidates["id"].iloc[1] / "result.json").unlink()
    more = run_sweep(cache, configs + expand_grid({"lr": [1e-4], **SMALL}), SweepOptions(out=out, progress=False))
    assert (more.computed, more.skipped) == (2, 2)


@pytest.mark.slow
def test_a_sweep_directory_is_bound_to_its_cache_and_protocol(tmp_path, cache):
    out = tmp_path / "sweep"
    configs = expand_grid(SMALL)
    run_sweep(cache, configs, SweepOptions(out=out, progress=False))
    with pytest.raises(InputError, match="another folds"):
        run_sweep(cache, configs, SweepOptions(out=out, folds=3, progress=False))


@pytest.mark.slow
def test_the_test_split_never_influences_selection(tmp_path, cache):
    """Scramble every test row's features: the leaderboard (validation scores) must not move."""
    configs = expand_grid({"dropout": [0.3], **SMALL})
    first = run_sweep(cache, configs, SweepOptions(out=tmp_path / "a", folds=2, progress=False))
    split = pd.read_csv(tmp_path / "a" / "split.csv").set_index("image_id")["split"]
    scrambled = tmp_path / "scrambled.h5"
    shutil.copy(cache, scrambled)
    with h5py.File(scrambled, "r+") as f:
        ids = [i.decode() for i in f["image_id"][:]]
        test_rows = np.flatnonzero([split.get(i) == "test" for i in ids])
        f["features"][test_rows] = np.random.default_rng(1).normal(0, 5, (len(test_rows), f["features"].shape[1]))
    second = run_sweep(scrambled, configs, SweepOptions(out=tmp_path / "b", folds=2, split_from=tmp_path / "a",
                                                       progress=False))
    assert [(r["id"], r["score"]) for r in first.leaderboard] == [(r["id"], r["score"]) for r in second.leaderboard]
    assert first.best_metrics["test"]["balanced_accuracy"] != second.best_metrics["test"]["balanced_accuracy"]
    # the winner's report names its sweep, and its validation spread is the sample SD of the 2 fold scores
    report = (tmp_path / "a" / "best" / "report.md").read_text()
    result = json.loads((tmp_path / "a" / "configs" / first.winner / "result.json").read_text())
    scores = [f["balanced_accuracy"] for f in result["folds"]]
    assert len(scores) == 2 and result["summary"]["balanced_accuracy"]["std"] == pytest.approx(np.std(scores, ddof=1))
    assert f"Chosen by sweep `{tmp_path / 'a'}`: highest mean balanced_accuracy over 2 folds" in report
    assert (f"{np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f} (sample standard deviation over 2 folds)"
            in report)


def test_fold_spread_is_the_sample_standard_deviation_with_its_count():
    from bottleneck.runs.sweep import fold_summary

    folds = [{"balanced_accuracy": 0.6, "accuracy": 0.7, "roc_auc_macro": None, "melanoma_sensitivity": 0.5,
              "best_epoch": 3}, {"balanced_accuracy": 0.8, "accuracy": 0.7, "roc_auc_macro": None,
                                 "melanoma_sensitivity": None, "best_epoch": 5}]
    s = fold_summary(folds)
    assert s["balanced_accuracy"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1 * 2 ** 0.5), "n": 2}
    assert s["accuracy"]["std"] == 0 and s["best_epoch"]["mean"] == 4
    assert s["roc_auc_macro"] == {"mean": None, "std": None, "n": 0}
    assert s["melanoma_sensitivity"] == {"mean": 0.5, "std": None, "n": 1}  # no spread from one score


@pytest.mark.slow
def test_cli_sweep_with_options_prints_a_leaderboard(tmp_path, cache):
    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", str(cache), "--lr", "1e-3,3e-4", "--hidden", "64", "--hidden", "32,32",
                            "--epochs", "4", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 5 and set(board["hidden"].astype(str)) == {"64", "32,32", "linear"}
    assert board.loc[board["hidden"] == "linear", "baseline"].all()  # the baseline row every leaderboard has
    assert "| rank |" in r.output
    r = runner.invoke(app, ["sweep", str(cache), "--dropout", "0.3,lots", "--out", str(out), "--quiet"])
    assert r.exit_code == 1 and "grid key 'dropout': cannot read value 'lots'" in r.output
