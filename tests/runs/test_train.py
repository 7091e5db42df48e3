"""train-head on real caches: artifacts, grouped splits, reproducibility, overwriting, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_HEAD, TINY, copy_run, feature_cache, make_ham, run_cli
from PIL import Image

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.extract.run import ExtractOptions, extract
from bottleneck.heads.model import HeadConfig
from bottleneck.images.index import build_index
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.runs.directory import load_run

FAST = HeadConfig(**FAST_HEAD)  # the configuration of conftest's synth_run


def test_a_run_leaves_every_artifact_and_they_agree(synth_run):
    cache, d = synth_run["cache"], synth_run["run"]
    for name in ("config.json", "split.csv", "history.csv", "metrics.json", "predictions.csv", "curves.png",
                 "confusion.png", "report.md", "head.keras"):
        assert (d / name).is_file(), name
    for png in ("curves.png", "confusion.png"):
        assert Image.open(d / png).size[0] > 100
    config = json.loads((d / "config.json").read_text())
    assert config["cache"]["sha256"] and config["head"]["hidden"] == [512, 512]
    assert config["command"][:3] == ["bottleneck", "train-head", str(cache)]
    metrics = json.loads((d / "metrics.json").read_text())
    test = metrics["test"]
    assert {"accuracy", "balanced_accuracy", "per_class", "roc_auc_macro", "confusion_matrix",
            "majority_baseline", "melanoma"} <= set(test)
    assert test["melanoma"]["class"] == "mel" and test["melanoma"]["sensitivity"] is not None
    assert test["balanced_accuracy"] > test["majority_baseline"]["balanced_accuracy"]  # it learned something
    preds = pd.read_csv(d / "predictions.csv", keep_default_na=False)
    split = pd.read_csv(d / "split.csv")
    assert len(preds) == len(split) == 240
    probs = preds[["p_bcc", "p_mel", "p_nv"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    t = preds[preds.split == "test"]
    assert (t["true"] == t["predicted"]).mean() == pytest.approx(test["accuracy"])
    history = pd.read_csv(d / "history.csv")
    assert list(history.columns[:2]) == ["epoch", "accuracy"] or "val_loss" in history.columns
    assert len(history) == config["epochs_run"]
    # the saved head reproduces the saved predictions
    _, head = load_run(d)
    data = load_cache(cache)
    rows = [list(data.image_ids).index(i) for i in t["image_id"]]
    np.testing.assert_allclose(head.predict(data.features[rows], verbose=0),
                               t[["p_bcc", "p_mel", "p_nv"]].to_numpy(), atol=1e-4)
    report = (d / "report.md").read_text()
    assert "baseline" in report and "melanoma sens" in report and "| test |" in report


def test_groups_stay_in_one_split(synth_run):
    cache = synth_run["cache"]
    split = pd.read_csv(synth_run["run"] / "split.csv").set_index("image_id")["split"]
    data = load_cache(cache)
    df = pd.DataFrame({"group": data.groups, "split": split.loc[list(data.image_ids)].to_numpy()})
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert df.groupby("group").size().max() == 3  # groups really hold several images


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_split(tmp_path, synth_run):
    """The session's run (made before whatever other tests ran in this process) and this one: the same bytes."""
    cache, a = synth_run["cache"], synth_run["run"]
    b = train_head_run(cache, FAST, RunOptions(out=tmp_path / "b", progress=False))
    assert (a / "metrics.json").read_text() == (b.run_dir / "metrics.json").read_text()
    assert (a / "predictions.csv").read_text() == (b.run_dir / "predictions.csv").read_text()
    from bottleneck.heads.splits import SplitSpec

    c = train_head_run(cache, HeadConfig(epochs=8, patience=4, seed=1),
                       RunOptions(out=tmp_path / "c", split=SplitSpec(seed=1), progress=False))
    assert (a / "split.csv").read_text() != (c.run_dir / "split.csv").read_text()


@pytest.mark.slow
def test_split_from_reuses_the_test_set(tmp_path, synth_run):
    cache, a = synth_run["cache"], synth_run["run"]
    b = train_head_run(cache, HeadConfig(epochs=5, optimizer="adam", seed=5),
                       RunOptions(out=tmp_path / "b", split_from=a, progress=False))
    assert (a / "split.csv").read_text() == (b.run_dir / "split.csv").read_text()
    assert json.loads((b.run_dir / "config.json").read_text())["split"]["from"] == str(a)


@pytest.mark.slow
def test_an_existing_run_is_not_overwritten_unless_asked(tmp_path, synth_run):
    cache, out = synth_run["cache"], copy_run(synth_run["run"], tmp_path)
    before = (out / "metrics.json").read_text()
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        train_head_run(cache, HeadConfig(epochs=3, seed=9), RunOptions(out=out, progress=False))
    assert (out / "metrics.json").read_text() == before
    train_head_run(cache, HeadConfig(epochs=3, seed=9), RunOptions(out=out, overwrite=True, progress=False))
    assert json.loads((out / "config.json").read_text())["head"]["seed"] == 9
    assert not list(tmp_path.glob(".run*"))  # no temporary folders left behind


@pytest.mark.slow
def test_train_head_never_opens_an_image(tmp_path):
    """From real JPEGs through a real backbone, then the images are deleted before training."""
    root = make_ham(tmp_path / "HAM", n_lesions=9, images_per_lesion=2)
    cache = tmp_path / "ham.h5"
    extract(build_index(root), ExtractOptions(**TINY, cache=cache, progress=False))
    shutil.rmtree(root)
    r = train_head_run(cache, FAST, RunOptions(out=tmp_path / "run", progress=False))
    assert r.metrics["test"]["n"] > 0


@pytest.mark.parametrize("kind, message", [
    ("empty", "is empty (0 rows)"),
    ("one_class", "single class ('nv')"),
    ("too_small", "class 'df' has only 1 groups (2 images)"),
])
def test_bad_caches_are_refused_with_the_reason(tmp_path, kind, message):
    counts = {"empty": {}, "one_class": {"nv": 30}, "too_small": {"df": 2, "nv": 40, "mel": 20}}[kind]
    cache = feature_cache(tmp_path / "c.h5", counts=counts)
    r = run_cli("train-head", cache, "--out", tmp_path / "run", "--quiet", "--epochs", "3")
    assert r.exit_code == 1 and message in r.output, r.output
    assert not (tmp_path / "run").exists()


# --- every figure recomputes from predictions.csv; the decision rule named, chosen and reused ---------------------

def read_predictions(path) -> pd.DataFrame:
    """predictions.csv as a reviewer reads it (pandas' default parser reads each float64 back exactly)."""
    return pd.read_csv(path, keep_default_na=False)


def ovr_from_logp(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """One-vs-rest log-odds from the logp_ columns, with scipy (not the library's code)."""
    from scipy.special import logsumexp

    logp = frame[[f"logp_{n}" for n in names]].to_numpy()
    return np.stack([logp[:, k] - logsumexp(np.delete(logp, k, axis=1), axis=1) for k in range(len(names))], 1)


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """An imbalanced cache whose classes overlap (calibration moves decisions off the most probable class), a head
    run off it with the default (balanced) rule, and a two-class cache (mel first) with its run."""
    tmp = tmp_path_factory.mktemp("overlap")
    cache = feature_cache(tmp / "multi.h5", counts={"bcc": 40, "mel": 40, "nv": 240}, dim=16, separation=0.5)
    train_head_run(cache, FAST, RunOptions(out=tmp / "balanced", progress=False))
    binary = feature_cache(tmp / "binary.h5", counts={"mel": 40, "other": 160}, dim=16, separation=0.5)
    train_head_run(binary, FAST, RunOptions(out=tmp / "binary", progress=False))
    return {"cache": cache, "run": tmp / "balanced", "binary": tmp / "binary"}


def test_predictions_csv_recomputes_balanced_accuracy_and_every_auc_of_metrics_json_exactly(overlapping):
    from sklearn.metrics import roc_auc_score

    d = overlapping["run"]
    metrics = json.loads((d / "metrics.json").read_text())
    names = json.loads((d / "config.json").read_text())["class_names"]
    t = read_predictions(d / "predictions.csv").query("split == 'test'")
    test = metrics["test"]
    recalls = [(t["predicted"][t["true"] == n] == n).mean() for n in names]
    assert float(np.mean(recalls)) == test["balanced_accuracy"]
    assert (t["predicted"] == t["true"]).mean() == test["accuracy"]
    scores = ovr_from_logp(t, names)
    aucs = {n: roc_auc_score(t["true"] == n, scores[:, k]) for k, n in enumerate(names)}
    assert aucs == test["roc_auc_per_class"]
    assert float(np.mean(list(aucs.values()))) == test["roc_auc_macro"]
    # the rule, named in the file; the share of rows it moves off the most probable class, in metrics and report
    probs = t[[f"p_{n}" for n in names]].to_numpy()
    assert (t["most_probable"] == [names[k] for k in probs.argmax(axis=1)]).all()
    assert set(t["decision_rule"]) == {"balanced"} and metrics["decision_rule"]["rule"] == "balanced"
    moved = int((t["predicted"] != t["most_probable"]).sum())
    assert moved > 0 and test["not_most_probable"] == {"rows": moved, "share": moved / len(t)}
    assert metrics["decision_rule"]["on_test"] == test["not_most_probable"]
    report = (d / "report.md").read_text()
    assert "### Decision rule" in report and f"{moved} of {len(t)} images ({moved / len(t):.1%})" in report


def test_a_two_class_run_reports_one_auc_for_both_classes(overlapping):
    from sklearn.metrics import roc_auc_score

    d = overlapping["binary"]
    test = json.loads((d / "metrics.json").read_text())["test"]
    t = read_predictions(d / "predictions.csv").query("split == 'test'")
    auc = roc_auc_score(t["true"] == "mel", ovr_from_logp(t, ["mel", "other"])[:, 0])
    assert test["roc_auc_per_class"] == {"mel": auc, "other": auc} and test["roc_auc_macro"] == auc
    assert roc_auc_score(t["true"] == "other", ovr_from_logp(t, ["mel", "other"])[:, 1]) == pytest.approx(auc)
    assert "one AUC and one ROC curve, the mel class's" in (d / "report.md").read_text()


@pytest.mark.slow
def test_decision_most_probable_is_recorded_and_evaluate_reuses_it(tmp_path, overlapping):
    run = tmp_path / "mp"
    r = run_cli("train-head", overlapping["cache"], "--out", run, "--decision", "most-probable", "--epochs",
                FAST.epochs, "--patience", FAST.patience, "--quiet")
    assert r.exit_code == 0, r.output
    config = json.loads((run / "config.json").read_text())
    assert config["decision_rule"] == "most-probable"
    assert config["command"][config["command"].index("--decision") + 1] == "most-probable"
    preds = read_predictions(run / "predictions.csv")
    assert (preds["predicted"] == preds["most_probable"]).all() and set(preds["decision_rule"]) == {"most-probable"}
    assert json.loads((run / "metrics.json").read_text())["test"]["not_most_probable"]["rows"] == 0
    # the same head as the balanced run (same cache and seed): only the decisions differ
    balanced = read_predictions(overlapping["run"] / "predictions.csv")
    assert (preds["most_probable"] == balanced["most_probable"]).all()
    assert (preds["predicted"] != balanced["predicted"]).any()
    r = run_cli("evaluate", run, "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    served = read_predictions(tmp_path / "eval" / "predictions.csv")
    assert (served["predicted"] == served["most_probable"]).all()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["decision_rule"]["rule"] == "most-probable"
    r = run_cli("train-head", overlapping["cache"], "--out", tmp_path / "bad", "--decision", "argmax", "--quiet")
    assert r.exit_code == 1 and "--decision should be balanced or most-probable; received 'argmax'" in r.output
    assert not (tmp_path / "bad").exists()


def test_evaluate_gives_the_runs_own_auc_and_an_older_run_keeps_its_balanced_rule(tmp_path, overlapping):
    run = copy_run(overlapping["run"], tmp_path)
    own = json.loads((run / "metrics.json").read_text())["test"]
    theirs = read_predictions(run / "predictions.csv").query("split == 'test'").set_index("image_id")
    assert run_cli("evaluate", run, "--out", tmp_path / "e1").exit_code == 0
    m = json.loads((tmp_path / "e1" / "metrics.json").read_text())["metrics"]
    assert m["roc_auc_per_class"] == own["roc_auc_per_class"] and m["roc_auc_macro"] == own["roc_auc_macro"]
    assert m["balanced_accuracy"] == own["balanced_accuracy"]
    config = json.loads((run / "config.json").read_text())
    del config["decision_rule"]  # as a run written before --decision
    (run / "config.json").write_text(json.dumps(config))
    assert run_cli("evaluate", run, "--out", tmp_path / "e2").exit_code == 0
    served = read_predictions(tmp_path / "e2" / "predictions.csv").set_index("image_id")
    assert (served["predicted"] == theirs["predicted"][served.index]).all()
    assert (served["predicted"] != served["most_probable"]).any()  # the balanced rule, with its decision weights


@pytest.mark.slow
def test_an_image_under_two_lesion_ids_is_reported_and_grouped(tmp_path):
    """One picture stored under two lesion ids that the plain split puts in train and test: `report` lists the pair
    as crossing (split unchanged), the default `group` joins the lesions into one split, records it, and a run
    reusing that split keeps the joined groups."""
    from bottleneck.heads.splits import SplitSpec, make_split

    plain = load_cache(feature_cache(tmp_path / "plain.h5", images_per_group=3))
    split = make_split(plain.labels, plain.groups, plain.image_ids, plain.class_names, SplitSpec())
    mel = plain.labels == plain.class_names.index("mel")
    a = int(np.flatnonzero(mel & (split == "train"))[0])
    b = int(np.flatnonzero(mel & (split == "test"))[0])
    dup = 0b110101 << 20
    cache = feature_cache(tmp_path / "c.h5", images_per_group=3,
                          phash=lambda k, name, i: dup if k in (a, b) else (k * 0x9E3779B97F4A7C15 % 2 ** 63) << 1)
    r = run_cli("train-head", cache, "--out", tmp_path / "report", "--quiet", "--epochs", "3", "--duplicates", "report")
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "report" / "config.json").read_text())
    record = config["split"]["duplicates"]
    assert record["mode"] == "report" and record["pairs"] == 1 and record["crossing"] == 1 and record["joined"] == []
    assert {record["listed"][0]["image_a"], record["listed"][0]["image_b"]} == {plain.image_ids[a], plain.image_ids[b]}
    assert config["command"][config["command"].index("--duplicates") + 1] == "report"
    reported = pd.read_csv(tmp_path / "report" / "split.csv").set_index("image_id")["split"]
    assert (reported.loc[list(plain.image_ids)].to_numpy() == split).all()  # the split is not changed
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["near_duplicates"]["crossing_splits"] == 1
    assert plain.image_ids[a] in (tmp_path / "report" / "report.md").read_text()

    grouped = train_head_run(cache, FAST, RunOptions(out=tmp_path / "group", progress=False))
    record = json.loads((grouped.run_dir / "config.json").read_text())["split"]["duplicates"]
    assert record["mode"] == "group" and record["crossing"] == 0
    assert record["joined"] == [sorted([f"g:{plain.groups[a]}", f"g:{plain.groups[b]}"])]
    joined = pd.read_csv(grouped.run_dir / "split.csv").set_index("image_id")["split"]
    together = np.isin(plain.groups, [plain.groups[a], plain.groups[b]])
    assert joined.loc[list(plain.image_ids[together])].nunique() == 1
    metrics = json.loads((grouped.run_dir / "metrics.json").read_text())["near_duplicates"]
    assert metrics["pairs"] == 1 and metrics["joined_groups"] == 1 and metrics["crossing_splits"] == 0
    assert "joined 1 set of groups" in (grouped.run_dir / "report.md").read_text()

    reused = train_head_run(cache, FAST, RunOptions(out=tmp_path / "reused", split_from=grouped.run_dir,
                                                     progress=False))
    assert json.loads((reused.run_dir / "config.json").read_text())["split"]["duplicates"]["joined"] == \
        record["joined"]
    assert (reused.run_dir / "split.csv").read_text() == (grouped.run_dir / "split.csv").read_text()


def test_duplicates_option_is_checked(tmp_path):
    r = run_cli("train-head", tmp_path / "missing.h5", "--duplicates", "merge")
    assert r.exit_code != 0 and "--duplicates should be one of group, report, ignore" in r.output


@pytest.mark.slow
def test_the_rerun_line_holds_a_memory_budget_only_when_the_user_gave_one(tmp_path):
    """The "Rerun:" line once carried this machine's resolved budget (`--memory-gb 5.89`): a rerun command holds what
    the user chose, and a budget changes speed, not results."""
    cache = feature_cache(tmp_path / "c.h5")
    for given, out in (([], tmp_path / "default"), (["--memory-gb", "0.5"], tmp_path / "given")):
        r = run_cli("train-head", cache, "--out", out, "--epochs", "2", "-q", *given)
        assert r.exit_code == 0, r.output
        command = json.loads((out / "config.json").read_text())["command"]
        rerun = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("Rerun:"))
        assert ("--memory-gb" in command) == bool(given) and ("--memory-gb" in rerun) == bool(given)
    assert command[command.index("--memory-gb") + 1] == "0.5"
