"""--class-map: a task defined off one cache (binary, merged, dropped classes), recorded and reused, and external
data with other class names mapped onto a run's classes; what is dropped is counted, never silent."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, restamp, run_cli

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.heads.class_map import map_classes, parse_class_map

COUNTS = {"bcc": 30, "mel": 30, "nv": 60}
FAST = ["--hidden", "16", "--epochs", "6", "--patience", "3", "--quiet"]
BINARY = "mel=mel;other=*"


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A 3-class cache (lesions of 2 images) and a mel-vs-rest head trained off it through the CLI."""
    tmp = tmp_path_factory.mktemp("classmap")
    cache = feature_cache(tmp / "ham.h5", counts=COUNTS, dim=16)
    r = run_cli("train-head", cache, "--out", tmp / "binary", "--class-map", BINARY, *FAST)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "cache": cache, "run": tmp / "binary", "output": r.output}


def split_of(run) -> pd.Series:
    return pd.read_csv(run / "split.csv", dtype=str).set_index("image_id")["split"]


# --- parsing ------------------------------------------------------------------------------------------------------

def test_spec_toml_and_csv_give_the_same_map(tmp_path):
    spec = parse_class_map("malignant = mel, bcc ; benign=*")
    assert spec.rules == (("malignant", ("mel", "bcc")), ("benign", ("*",)))
    assert spec.spec == "malignant=mel,bcc;benign=*"
    toml = tmp_path / "task.toml"
    toml.write_text('malignant = ["mel", "bcc"]\nbenign = "*"\n')
    table = tmp_path / "table.toml"
    table.write_text('[class_map]\nmalignant = "mel,bcc"\nbenign = ["*"]\n')
    csv = tmp_path / "task.csv"
    csv.write_text("target,source\nmalignant,mel\nmalignant,bcc\nbenign,*\n")
    bare = tmp_path / "bare.csv"
    bare.write_text("mel,malignant\nbcc,malignant\n*,benign\n")
    assert {parse_class_map(str(p)).spec for p in (toml, table, csv, bare)} == {spec.spec}


@pytest.mark.parametrize("value, message", [
    ("mel", "should be target=source1,source2"),
    ("=mel", "no target name"),
    ("mel=", "has no source classes"),
    ("a=mel;a=nv", "target 'a' appears twice"),
    ("a=mel;b=mel", "source class 'mel' is mapped twice"),
    ("a=*;b=*", "'\\*' appears twice"),
    ("missing.toml", "does not exist"),
])
def test_bad_maps_are_refused_in_one_line(value, message):
    with pytest.raises(InputError, match=message):
        parse_class_map(value)


def test_a_source_the_cache_lacks_is_refused_naming_its_classes(tmp_path):
    data = load_cache(feature_cache(tmp_path / "c.h5", counts=COUNTS, dim=8))
    with pytest.raises(InputError, match=r"'melanoma' is not a class of cache .* \(its classes: bcc, mel, nv\)"):
        map_classes(data, parse_class_map("mel=melanoma;other=*"))
    mapped = map_classes(data, parse_class_map("MEL=MEL;rest=nv"))  # case-insensitive sources; bcc dropped
    assert mapped.class_names == ["MEL", "rest"]
    assert mapped.class_map["counts"] == {"MEL": 30, "rest": 60} and mapped.class_map["dropped"] == {"bcc": 30}
    assert (mapped.labels == -1).sum() == 30 and np.array_equal(mapped.features, data.features)


# --- train-head ---------------------------------------------------------------------------------------------------

def test_a_binary_head_off_a_multiclass_cache_keeps_the_lesion_grouping(binary):
    run, data = binary["run"], load_cache(binary["cache"])
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["mel", "other"]
    assert config["cache"]["class_names"] == ["bcc", "mel", "nv"]  # the cache as it is
    assert config["class_map"]["spec"] == BINARY
    assert config["class_map"]["counts"] == {"mel": 30, "other": 90} and config["class_map"]["dropped"] == {}
    command = config["command"]
    assert command[command.index("--class-map") + 1] == BINARY
    split = split_of(run)
    assert len(split) == len(data.labels)  # nothing dropped: every image is in a split
    group_split = pd.DataFrame({"group": data.groups, "split": split.loc[data.image_ids].values})
    assert (group_split.groupby("group")["split"].nunique() == 1).all()  # no lesion in two splits
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == {"mel", "other"}
    assert metrics["test"]["melanoma"] is not None  # the positive class keeps its name
    pred = pd.read_csv(run / "predictions.csv")
    assert [c for c in pred.columns if c.startswith("p_")] == ["p_mel", "p_other"]
    assert set(pred["true"]) == {"mel", "other"}
    truth = dict(zip(data.image_ids, np.array(["bcc", "mel", "nv"])[data.labels]))
    assert all((truth[i] == "mel") == (t == "mel") for i, t in zip(pred["image_id"], pred["true"]))
    report = (run / "report.md").read_text()
    assert "## Task" in report and "| other | bcc, nv | 90 |" in report
    assert "other: bcc, nv (90 images)" in binary["output"] and "dropped: none" in binary["output"]


def test_a_partial_map_drops_and_counts_the_rest(binary):
    out = binary["tmp"] / "partial"
    r = run_cli("train-head", binary["cache"], "--out", out, "--class-map", "mel=mel;nv=nv", *FAST)
    assert r.exit_code == 0, r.output
    assert "dropped: bcc (30 images)" in r.output
    config = json.loads((out / "config.json").read_text())
    assert config["class_map"]["dropped"] == {"bcc": 30} and config["class_names"] == ["mel", "nv"]
    data = load_cache(binary["cache"])
    bcc = set(data.image_ids[data.labels == 0])
    assert not bcc & set(split_of(out).index)  # dropped images are in no split
    assert sum(config["split"]["sizes"][s]["images"] for s in ("train", "val", "test")) == 90
    assert "| (dropped) bcc | bcc | 30 |" in (out / "report.md").read_text()


def test_split_from_reuses_the_map_and_the_split(binary):
    out = binary["tmp"] / "again"
    r = run_cli("train-head", binary["cache"], "--out", out, "--split-from", binary["run"], *FAST)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["class_map"]["spec"] == BINARY and config["class_names"] == ["mel", "other"]
    assert split_of(out).equals(split_of(binary["run"]))


def test_a_map_that_keeps_one_class_is_refused(binary):
    out = binary["tmp"] / "one"
    r = run_cli("train-head", binary["cache"], "--out", out, "--class-map", "mel=mel", *FAST)
    assert r.exit_code == 1 and "a single class ('mel')" in r.output
    assert not out.exists()


# --- evaluate -----------------------------------------------------------------------------------------------------

def test_evaluate_on_its_own_cache_applies_the_runs_map(binary):
    r = run_cli("evaluate", binary["run"])
    assert r.exit_code == 0, r.output
    saved = json.loads((binary["run"] / "eval-test" / "metrics.json").read_text())
    trained = json.loads((binary["run"] / "metrics.json").read_text())["test"]
    assert saved["metrics"]["n"] == trained["n"]
    assert saved["metrics"]["balanced_accuracy"] == pytest.approx(trained["balanced_accuracy"])
    assert saved["class_map"]["spec"] == BINARY


@pytest.fixture(scope="module")
def ph2(binary):
    """An external cache with PH2's class names and bytes of its own."""
    path = feature_cache(binary["tmp"] / "ph2.h5", counts={"melanoma": 8, "common_nevus": 10, "atypical_nevus": 12},
                         dim=16, seed=5)
    return restamp(path, salt="f", source="csv")


def test_ph2_names_map_onto_the_runs_classes(binary, ph2):
    r = run_cli("evaluate", binary["run"], "--cache", ph2, "--class-map",
                "mel=melanoma;other=common_nevus,atypical_nevus")
    assert r.exit_code == 0, r.output
    saved = json.loads((binary["run"] / "eval-ph2" / "metrics.json").read_text())
    assert saved["metrics"]["n"] == 30 and saved["class_map"]["counts"] == {"mel": 8, "other": 22}
    assert saved["metrics"]["per_class"]["mel"]["support"] == 8
    assert saved["majority_baseline_from"] == "training" and saved["metrics"]["majority_baseline"]["class"] == "other"
    pred = pd.read_csv(binary["run"] / "eval-ph2" / "predictions.csv")
    assert (pred["true"] == "mel").sum() == 8


def test_a_partial_external_map_counts_what_it_drops(binary, ph2):
    r = run_cli("evaluate", binary["run"], "--cache", ph2, "--class-map", "mel=melanoma")
    assert r.exit_code == 0, r.output
    assert "dropped: atypical_nevus (12 images), common_nevus (10 images)" in r.output
    saved = json.loads((binary["run"] / "eval-ph2" / "metrics.json").read_text())
    assert saved["metrics"]["n"] == 8
    assert saved["unmapped_classes"] == {"atypical_nevus": 12, "common_nevus": 10}
    # The baseline is the training majority (other), not the evaluated one (mel): 0 accuracy, not 1.000.
    assert saved["metrics"]["majority_baseline"]["accuracy"] == 0
    assert "atypical_nevus (12 images)" in (binary["run"] / "eval-ph2" / "report.md").read_text()


def test_external_names_unlike_the_maps_sources_are_refused_not_swallowed_by_the_star(binary, ph2):
    """Without --class-map the run's 'mel=mel;other=*' would put PH2's melanomas under 'other': refused."""
    r = run_cli("evaluate", binary["run"], "--cache", ph2)
    assert r.exit_code == 1
    assert "mel missing" in r.output and "--class-map" in r.output
    bad = run_cli("evaluate", binary["run"], "--cache", ph2, "--class-map", "melanoma=melanoma")
    assert bad.exit_code == 1 and "target 'melanoma' is not a class of the run" in bad.output


# --- sweep --------------------------------------------------------------------------------------------------------

def test_sweep_with_a_class_map_records_it_and_binds_its_directory(binary):
    out = binary["tmp"] / "sweep"
    args = ["sweep", binary["cache"], "--out", out, "--lr", "1e-3", "--hidden", "16", "--epochs", "4",
            "--patience", "2", "--quiet"]
    r = run_cli(*args, "--class-map", BINARY)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "sweep.json").read_text())["class_map"] == BINARY
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["class_names"] == ["mel", "other"] and best["class_map"]["spec"] == BINARY
    assert set(json.loads((out / "best" / "metrics.json").read_text())["test"]["per_class"]) == {"mel", "other"}
    again = run_cli(*args, "--class-map", "mel=mel;nv=nv")
    assert again.exit_code == 1 and "another class_map" in again.output


# --- from images: fine-tune, predict, export of a mapped run -------------------------------------------------------

@pytest.fixture(scope="module")
def mapped_run(ham_run):
    """A mel-vs-rest head off the real (vgg16, 32 px) HAM-style cache of 9 lesions x 2 images."""
    out = ham_run["tmp"] / "mapped"
    r = run_cli("train-head", ham_run["cache"], "--out", out, "--class-map", BINARY, "--hidden", "16",
                "--epochs", "2", "--no-standardize", "--dropout", "0", "--quiet", "--overwrite")
    assert r.exit_code == 0, r.output
    return out


def test_predict_and_export_name_the_maps_classes(ham_run, mapped_run):
    images = sorted(ham_run["root"].rglob("*.jpg"))[:3]
    out = ham_run["tmp"] / "mapped-pred.csv"
    r = run_cli("predict", mapped_run, *images, "--out", out)
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out)
    assert [c for c in pred.columns if c.startswith("p_")] == ["p_mel", "p_other"]
    assert np.allclose(pred[["p_mel", "p_other"]].sum(axis=1), 1, atol=1e-6)
    assert (pred["p_mel"] != pred["p_mel"].round(6)).any()  # full precision, not 6 decimals
    exported = ham_run["tmp"] / "mapped-keras"
    r = run_cli("export", mapped_run, "--format", "keras", "--out", exported, "--overwrite")
    assert r.exit_code == 0, r.output
    labels = json.loads((exported / "labels.json").read_text())
    assert labels["class_names"] == ["mel", "other"] and labels["class_map"]["spec"] == BINARY


def test_fine_tune_keeps_the_maps_classes_and_refuses_another_task(ham_run, mapped_run):
    out = ham_run["tmp"] / "mapped-ft"
    bad = run_cli("fine-tune", mapped_run, "--out", out, "--class-map", "malignant=mel;other=*", "--quiet")
    assert bad.exit_code == 1 and "target 'malignant' is not a class of the run" in bad.output
    assert not out.exists()
    r = run_cli("fine-tune", mapped_run, "--out", out, "--epochs", "1", "--batch-size", "8", "--no-augment",
                "--unfreeze", "1", "--quiet")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["mel", "other"] and config["class_map"]["spec"] == BINARY
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == {"mel", "other"}
    unreadable = sum(f["split"] == "test" for f in config["failed"])  # the `tuned` fixture may damage one
    assert metrics["test"]["n"] + unreadable == json.loads((mapped_run / "metrics.json").read_text())["test"]["n"]
