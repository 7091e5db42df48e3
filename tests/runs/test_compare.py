"""compare through the real CLI: two heads of one split, their paired differences and DeLong p-values recomputed here
from the runs' own predictions.csv (scikit-learn, scipy and a direct O(n^2) DeLong); runs on other test rows refused
with the counts, or compared on the shared rows with --intersect; evaluation folders, out-of-fold rows of folds runs
and an external cache (--cache); the refusals that leave nothing behind."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import copy_run, feature_cache, restamp, run_cli
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from bottleneck.stats.bootstrap import resample_weights

QUICK = ["--epochs", "8", "--patience", "4", "-q"]


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """One cache of overlapping classes (the heads are good, not perfect) in lesions of 2; run a (linear head),
    run b (a small hidden layer, another seed) on a's split, run c on a split of its own."""
    tmp = tmp_path_factory.mktemp("compare")
    cache = feature_cache(tmp / "feat.h5", counts={"bcc": 80, "mel": 80, "nv": 160}, dim=16, separation=0.35)
    for name, extra in (("a", ["--hidden", "none"]), ("b", ["--hidden", "16", "--seed", "3", "--split-from",
                                                             tmp / "a"]), ("c", ["--hidden", "16", "--seed", "5"])):
        r = run_cli("train-head", cache, "--out", tmp / name, *extra, *QUICK)
        assert r.exit_code == 0, r.output
    return {"cache": cache, "tmp": tmp, **{k: tmp / k for k in "abc"}}


def rows_of(run, rows="test"):
    """The compared rows of a run's predictions.csv, by image id, read here with pandas."""
    df = pd.read_csv(run / "predictions.csv", keep_default_na=False, float_precision="round_trip")
    df["image_id"] = df["image_id"].astype(str)
    return (df[df["split"] == "test"] if rows == "test" else df).set_index("image_id")



def mel_score(df):
    """log-odds of mel against the rest, from the logp_ columns."""
    return df["logp_mel"] - logsumexp(df[["logp_bcc", "logp_nv"]].to_numpy(), axis=1)


def delong_by_pairs(positive, a, b):
    """DeLong's test written from its definition: psi over every positive-negative pair."""
    comps = []
    for s in (np.asarray(a), np.asarray(b)):
        x, y = s[positive][:, None], s[~positive][None, :]
        psi = (x > y) + 0.5 * (x == y)
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    cov = np.cov(np.stack([c[1] for c in comps])) / positive.sum() + \
        np.cov(np.stack([c[2] for c in comps])) / (~positive).sum()
    z = (comps[1][0] - comps[0][0]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return z, 2 * norm.sf(abs(z))


def figures(df, threshold, w=None):
    """Balanced accuracy, AUC of mel, sensitivity and specificity at p_mel >= threshold (row weights w)."""
    hit = (df["true"] == "mel").to_numpy()
    flagged = (df["p_mel"] >= threshold).to_numpy()
    w = np.ones(len(df)) if w is None else w
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample without some class: sklearn warns, and leaves it out
        return {"balanced_accuracy": balanced_accuracy_score(df["true"], df["predicted"], sample_weight=w),
                "auc": roc_auc_score(hit, mel_score(df), sample_weight=w) if (w[hit] > 0).any() else np.nan,
                "sensitivity": np.sum(w * (flagged & hit)) / np.sum(w * hit) if (w[hit] > 0).any() else np.nan,
                "specificity": np.sum(w * (~flagged & ~hit)) / np.sum(w * ~hit)}


def threshold_of(run):
    return json.loads((run / "config.json").read_text())["operating_point"]["threshold"]


@pytest.mark.slow
def test_two_heads_of_one_split_agree_with_an_independent_recomputation(heads):
    a, b, out = heads["a"], heads["b"], heads["tmp"] / "ab"
    r = run_cli("compare", a, b, "--out", out, "--resamples", "300", "--seed", "7")
    assert r.exit_code == 0, r.output
    record = json.loads((out / "comparison.json").read_text())
    assert {p.name for p in out.iterdir()} == {"comparison.md", "comparison.json", "roc.png", "calibration.png"}
    da, db = rows_of(a), rows_of(b)
    assert set(da.index) == set(db.index)
    db = db.loc[da.index]
    assert record["rows"]["images"] == len(da) and record["positive"] == "mel"
    pair = record["pairs"][0]
    assert (pair["a"], pair["b"]) == ("a", "b")
    fa, fb = figures(da, threshold_of(a)), figures(db, threshold_of(b))
    for m in ("balanced_accuracy", "auc", "sensitivity", "specificity"):
        d = pair["metrics"][m]
        assert (d["a"], d["b"]) == pytest.approx((fa[m], fb[m]), abs=1e-12), m
        assert d["difference"] == pytest.approx(fb[m] - fa[m], abs=1e-12), m
    # train-head's own test figures at its operating point are the ones compared
    own = json.loads((a / "metrics.json").read_text())["operating_point"]["test"]
    assert pair["metrics"]["sensitivity"]["a"] == pytest.approx(own["sensitivity"]["value"])
    # DeLong: the direct O(n^2) definition on the same scores
    z, p = delong_by_pairs((da["true"] == "mel").to_numpy(), mel_score(da), mel_score(db))
    assert pair["delong"]["z"] == pytest.approx(z, rel=1e-9) and pair["delong"]["p"] == pytest.approx(p, rel=1e-9)
    # the bootstrap: the same lesion resamples scored here with weighted scikit-learn figures
    groups = da["group"].astype(str).to_numpy()
    units = np.unique(["g:" + g for g in groups], return_inverse=True)[1].reshape(-1)
    diffs = {m: [] for m in fa}
    for w in np.concatenate(list(resample_weights(units, 300, 7))):
        wa, wb = figures(da, threshold_of(a), w), figures(db, threshold_of(b), w)
        for m in diffs:
            diffs[m].append(wb[m] - wa[m])
    for m, ds in diffs.items():
        ds = np.array(ds)
        ds = ds[np.isfinite(ds)]
        d = pair["metrics"][m]
        assert [d["lower"], d["upper"]] == pytest.approx(np.percentile(ds, [2.5, 97.5]), abs=1e-9), m
        share = min((ds <= 0).mean(), (ds >= 0).mean())
        assert d["p_bootstrap"] == pytest.approx(min(1, max(2 * share, 1 / len(ds)))), m
    # Holm over the 4 tests of one pair; the printed table is the report's
    ps = sorted(pair["metrics"][m]["p_bootstrap"] for m in diffs)
    assert min(pair["metrics"][m]["p_holm"] for m in diffs) == pytest.approx(min(1, 4 * ps[0]))
    assert record["survivors"]["tests"] == 4
    report = (out / "comparison.md").read_text()
    assert "| b - a | AUC |" in report and "| b - a | AUC |" in r.output and "Holm" in report


def test_an_evaluation_folder_compares_as_its_run(heads, tmp_path):
    a, b = heads["a"], heads["b"]
    r = run_cli("evaluate", a, "--out", tmp_path / "eval-a")
    assert r.exit_code == 0, r.output
    r = run_cli("compare", tmp_path / "eval-a", b, "--out", tmp_path / "cmp", "--resamples", "200")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert record["runs"][0]["kind"] == "evaluation"
    da = rows_of(a)
    assert record["rows"]["images"] == len(da)
    assert record["pairs"][0]["metrics"]["auc"]["a"] == pytest.approx(roc_auc_score(da["true"] == "mel",
                                                                                    mel_score(da)))


def test_runs_of_other_test_rows_are_refused_with_the_counts_or_intersected(heads):
    a, c, out = heads["a"], heads["c"], heads["tmp"] / "ac"
    ia, ic = set(rows_of(a).index), set(rows_of(c).index)
    r = run_cli("compare", a, c, "--out", out)
    assert r.exit_code == 1 and not out.exists()
    assert (f"({len(ia - ic)} only in a, {len(ic - ia)} only in c, {len(ia & ic)} shared)" in r.output
            and "--intersect" in r.output), r.output
    r = run_cli("compare", a, c, "--out", out, "--intersect", "--resamples", "200")
    assert r.exit_code == 0, r.output
    record = json.loads((out / "comparison.json").read_text())
    assert record["rows"]["intersect"] and record["rows"]["images"] == len(ia & ic)
    assert record["rows"]["left_out"] == {"a": len(ia - ic), "c": len(ic - ia)}
    assert "--intersect" in (out / "comparison.md").read_text()


@pytest.mark.slow
def test_external_cache_evaluates_each_head_and_compares_there(heads):
    a, b, tmp = heads["a"], heads["b"], heads["tmp"]
    ext = feature_cache(tmp / "ext.h5", counts={"bcc": 20, "mel": 20, "nv": 30}, dim=16, separation=0.35, seed=9)
    restamp(ext, salt="e")
    import h5py

    with h5py.File(ext, "a") as f:  # other images: synthetic caches number their ids alike
        f["image_id"][:] = np.array([f"e{k}" for k in range(len(f["image_id"]))], dtype=object)
    out = tmp / "ext-ab"
    r = run_cli("compare", a, b, "--cache", ext, "--out", out, "--resamples", "200")
    assert r.exit_code == 0, r.output
    record = json.loads((out / "comparison.json").read_text())
    assert record["cache"] == str(ext.resolve()) and record["rows"]["images"] == 70
    ea, eb = (rows_of(out / f"eval-{k}", rows="all") for k in "ab")
    assert len(ea) == 70 and (out / "eval-a" / "metrics.json").is_file()
    d = record["pairs"][0]["metrics"]["balanced_accuracy"]
    want = [balanced_accuracy_score(e["true"], e["predicted"]) for e in (ea, eb.loc[ea.index])]
    assert (d["a"], d["b"]) == pytest.approx(want)


@pytest.mark.slow
def test_folds_runs_compare_their_out_of_fold_rows_at_each_folds_threshold(heads, tmp_path):
    runs = []
    for name, extra in (("f1", ["--hidden", "none"]), ("f2", ["--hidden", "16", "--seed", "2"])):
        r = run_cli("train-head", heads["cache"], "--out", tmp_path / name, "--folds", "3", "--test", "0", *extra,
                    *QUICK)
        assert r.exit_code == 0, r.output
        runs.append(tmp_path / name)
    r = run_cli("compare", *runs, "--out", tmp_path / "cmp", "--resamples", "200")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert record["rows"]["images"] == 320 and record["rows"]["what"] == "out-of-fold rows"
    for run, side in zip(runs, ("a", "b")):
        oof = json.loads((run / "metrics.json").read_text())["oof"]["operating_point"]["oof"]
        got = record["pairs"][0]["metrics"]
        assert got["sensitivity"][side] == pytest.approx(oof["sensitivity"]["value"])
        assert got["specificity"][side] == pytest.approx(oof["specificity"]["value"])


@pytest.mark.slow
def test_refusals_name_the_problem_and_write_nothing(heads, tmp_path):
    a, b = heads["a"], heads["b"]
    r = run_cli("compare", a, a)
    assert r.exit_code == 1 and "given twice" in r.output
    r = run_cli("compare", a, b, "--class-map", "mel=mel;other=*")
    assert r.exit_code == 1 and "needs --cache" in r.output
    r = run_cli("compare", a, b, "--out", a, "--overwrite")
    assert r.exit_code == 1 and "would replace" in r.output and (a / "head.keras").is_file()
    r = run_cli("compare", a, b, "--positive", "vasc")
    assert r.exit_code == 1 and "--positive 'vasc' is not a class" in r.output
    damaged = copy_run(b, tmp_path, "damaged")
    preds = (damaged / "predictions.csv").read_text().splitlines()
    header = preds[1].split(",")
    cells = header[:]
    cells[preds[0].split(",").index("p_mel")] = "abc"
    (damaged / "predictions.csv").write_text("\n".join([preds[0], ",".join(cells), *preds[2:]]) + "\n")
    r = run_cli("compare", a, damaged, "--out", tmp_path / "d")
    assert r.exit_code == 1 and "column p_mel holds a value that is not a number" in r.output, r.output
    assert not (tmp_path / "d").exists()
    binary = tmp_path / "binary"
    r = run_cli("train-head", heads["cache"], "--out", binary, "--class-map", "mel=mel;other=*", "--split-from", a,
                *QUICK)
    assert r.exit_code == 0, r.output
    r = run_cli("compare", a, binary, "--out", tmp_path / "x")
    assert r.exit_code == 1 and "predict different classes" in r.output and not (tmp_path / "x").exists()
    out = tmp_path / "ab"
    assert run_cli("compare", a, b, "--out", out, "--resamples", "100").exit_code == 0
    r = run_cli("compare", a, b, "--out", out, "--resamples", "100")
    assert r.exit_code == 1 and "already exists" in r.output
    assert run_cli("compare", a, b, "--out", out, "--resamples", "100", "--overwrite").exit_code == 0
    r = run_cli("compare", a, b, "--resamples", "100")  # default: compare-<A>-<B> beside the first run
    assert r.exit_code == 0, r.output
    assert (heads["tmp"] / "compare-a-b" / "comparison.json").is_file()


@pytest.mark.slow
def test_compare_never_imports_tensorflow(heads):
    """compare reads predictions.csv, and with --cache applies the heads with numpy (as evaluate does): no ~10 s
    TensorFlow start-up."""
    import os
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from bottleneck.cli import app; "
            f"r = CliRunner().invoke(app, ['compare', {str(heads['a'])!r}, {str(heads['b'])!r}, '--out', "
            f"{str(heads['tmp'] / 'no-tf')!r}, '--resamples', '100']); "
            "print(r.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.split() == ["0", "False", "False"], proc.stdout + proc.stderr[-2000:]


def test_a_fine_tune_run_against_its_head_counts_its_unreadable_test_image(ham_run, tuned, tmp_path):
    """The fine-tune run could not read one test image (the fixture corrupts it): its test rows are one fewer than
    its head's, so the pair is refused with the counts, and --intersect compares them on the rest."""
    head, ft = ham_run["run"], tuned["result"].run_dir
    n_head, n_ft = len(rows_of(head)), len(rows_of(ft))
    assert n_ft == n_head - 1
    r = run_cli("compare", head, ft, "--out", tmp_path / "cmp")
    assert r.exit_code == 1 and f"(1 only in run, 0 only in ft, {n_ft} shared)" in r.output, r.output
    r = run_cli("compare", head, ft, "--out", tmp_path / "cmp", "--intersect", "--resamples", "100")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [x["kind"] for x in record["runs"]] == ["head run", "fine-tune run"]
    assert record["rows"]["images"] == n_ft and record["rows"]["left_out"] == {"run": 1, "ft": 0}
    d = record["pairs"][0]["metrics"]["balanced_accuracy"]
    df = rows_of(ft)
    assert d["b"] == pytest.approx(balanced_accuracy_score(df["true"], df["predicted"]))
