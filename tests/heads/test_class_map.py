"""--class-map: a task defined off one cache (binary, merged, dropped classes), recorded and reused, and external
data with other class names mapped onto a run's classes; what is dropped is counted, never silent."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_ARGS, copy_run, feature_cache, restamp, run_cli, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.heads.class_map import ClassMap, map_classes, parse_class_map, recorded_map, resolve

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


# --- the record: a map survives config.json whatever its names ----------------------------------------------------

# Names a SPEC would split or strip: separators, quotes, spaces at either end, unicode, control characters.
NAMES = st.text(st.one_of(st.sampled_from(",;= \"'*\\\n\tüé✓"), st.characters(blacklist_categories=("Cs",))),
                min_size=1, max_size=12).filter(lambda n: n.strip() and n != "*")


@st.composite
def class_maps(draw):
    sources = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    cuts = sorted(draw(st.sets(st.integers(1, len(sources) - 1), max_size=3))) if len(sources) > 1 else []
    groups = [sources[a:b] for a, b in zip([0, *cuts], [*cuts, len(sources)])]
    targets = draw(st.lists(NAMES, min_size=len(groups), max_size=len(groups), unique=True))
    star = draw(st.booleans())
    rules = tuple((t, tuple(g) + (("*",) if star and k == 0 else ())) for k, (t, g) in enumerate(zip(targets, groups)))
    return ClassMap(rules, origin=draw(st.none() | st.just("maps/task.csv"))), sources


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(class_maps())
def test_a_map_survives_its_record_exactly(drawn):
    """ClassMap -> the record config.json keeps (through JSON text) -> ClassMap is the same map, and resolves the
    same way, whatever the names hold."""
    cmap, sources = drawn
    counts = np.arange(1, len(sources) + 2)
    mapped = resolve(cmap, [*sources, "unnamed"], counts)
    config = json.loads(json.dumps({"class_map": mapped.record}, allow_nan=False))
    again = recorded_map(config)
    assert again == cmap and again.origin == cmap.origin and again.rules == cmap.rules
    assert resolve(again, [*sources, "unnamed"], counts).record == mapped.record
    if cmap.inline:  # what a SPEC can hold it still holds: the text reruns the same map
        assert parse_class_map(cmap.spec) == cmap and mapped.record["spec"] == cmap.spec
    else:  # the rerun names the file the map came from
        assert mapped.record["spec"] == (cmap.origin or cmap.spec)


def test_runs_recorded_by_earlier_versions_still_load():
    """Earlier runs recorded the SPEC text and a {target: sources} object: the object (right for any name) is
    used when present; a record with only the text is parsed as it always was."""
    assert recorded_map({"class_map": {"spec": BINARY, "counts": {"mel": 1, "other": 2}}}) == parse_class_map(BINARY)
    older = {"spec": "nevus, atypical=nevus, atypical;mel=mel", "targets": {"nevus, atypical": ["nevus, atypical"],
                                                                             "mel": ["mel"]}}
    assert recorded_map({"class_map": older}).rules == (("nevus, atypical", ("nevus, atypical",)), ("mel", ("mel",)))
    assert recorded_map({"class_map": None}) is None and recorded_map({}) is None
    for bad in ({"targets": [{"name": "a", "sources": "mel"}]}, {"counts": {}}, ["mel=mel"]):
        with pytest.raises(InputError, match="class map .* the run is damaged"):
            recorded_map({"class_map": bad})


def test_a_spec_longer_than_a_file_name_is_parsed_as_a_spec():
    """Probed as a path first, a SPEC over 255 bytes used to fail with ENAMETOOLONG."""
    spec = ";".join(f"target{k}=source{k}a,source{k}b" for k in range(20)) + ";last=x.csv"
    assert len(spec) > 255
    cmap = parse_class_map(spec)
    assert len(cmap.rules) == 21 and cmap.rules[-1] == ("last", ("x.csv",)) and cmap.spec == spec
    with pytest.raises(InputError, match="should be target=source1,source2"):
        parse_class_map("m" * 300)  # no '=': a file name too long to exist, refused in one line
    with pytest.raises(InputError, match="does not exist"):
        parse_class_map("mel\0.csv")  # a NUL byte: no such file, not a ValueError


def test_a_spec_cannot_name_a_class_with_a_separator_and_says_to_use_a_file(tmp_path):
    data = load_cache(feature_cache(tmp_path / "c.h5", counts={"nevus, atypical": 4, "mel": 4}, dim=8))
    with pytest.raises(InputError, match=r"'nevus' is not a class .* such as 'nevus, atypical' .* CSV file"):
        map_classes(data, parse_class_map("n=nevus, atypical;mel=mel"))
    table = tmp_path / "map.csv"
    table.write_text('source,target\n"nevus, atypical",n\nmel,mel\n')
    assert map_classes(data, parse_class_map(str(table))).class_map["counts"] == {"n": 4, "mel": 4}


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_run_recorded_with_only_the_spec_text_still_evaluates(binary, tmp_path):
    """config.json as the first class-map version wrote it (no structure): the SPEC is parsed as it was written."""
    run = copy_run(binary["run"], tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["class_map"] = {k: v for k, v in config["class_map"].items() if k not in ("targets", "file")}
    (run / "config.json").write_text(json.dumps(config))
    r = run_cli("evaluate", run, "--overwrite")  # the copied run may hold another test's evaluation
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert saved["class_map"]["targets"] == [{"name": "mel", "sources": ["mel"]}, {"name": "other", "sources": ["*"]}]
    assert saved["metrics"]["n"] == json.loads((run / "metrics.json").read_text())["test"]["n"]
    config["class_map"]["targets"] = "mel=mel;other=*"  # neither a list nor an object: damaged
    (run / "config.json").write_text(json.dumps(config))
    for args in (["evaluate", run, "--overwrite"],
                 ["train-head", binary["cache"], "--split-from", run, "--out", tmp_path / "new"]):
        r = run_cli(*args)
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert f"{run / 'config.json'}: key 'class_map' has no list of targets" in r.output
    assert not (tmp_path / "new").exists()
    assert json.loads((run / "eval-test" / "metrics.json").read_text()) == saved  # the failed one replaced nothing


@pytest.fixture(scope="module")
def ph2(binary):
    """An external cache with PH2's class names and bytes and ids of its own."""
    path = feature_cache(binary["tmp"] / "ph2.h5", counts={"melanoma": 8, "common_nevus": 10, "atypical_nevus": 12},
                         dim=16, seed=5)
    with h5py.File(path, "a") as f:
        f["image_id"][:] = np.array([f"IMD{k:03d}" for k in range(len(f["image_id"]))], dtype=object)
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
    r = run_cli("evaluate", binary["run"], "--cache", ph2, "--class-map", "mel=melanoma", "--overwrite")
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
    out = binary["tmp"] / "refused"  # eval-ph2 may hold an earlier test's evaluation: that refusal comes first
    r = run_cli("evaluate", binary["run"], "--cache", ph2, "--out", out)
    assert r.exit_code == 1
    assert "mel missing" in r.output and "--class-map" in r.output
    bad = run_cli("evaluate", binary["run"], "--cache", ph2, "--class-map", "melanoma=melanoma", "--out", out)
    assert bad.exit_code == 1 and "target 'melanoma' is not a class of the run" in bad.output
    assert not out.exists()


# --- sweep --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- class names a SPEC cannot hold, from class folders through a CSV map, end to end -----------------------------

# Class folders, and the targets a CSV maps them to: ',' ';' '=' quotes, unicode and spaces at either end.
ODD = {"nevus, atypical": "nevus, atypical", "mel;x=y": "mel;x=y", ' "naevus" ü ': 'other=1; "q"'}


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """Folders named as ODD (8 images each) extracted by the tiny backbone, and a head off them through a CSV map."""
    tmp = tmp_path_factory.mktemp("oddnames")
    for k, folder in enumerate(ODD):
        for i in range(8):
            write_image(tmp / "data" / folder / f"i{i}.jpg", seed=20 * k + i)
    r = run_cli("extract", tmp / "data", "--cache", tmp / "c.h5", *TINY_ARGS)
    assert r.exit_code == 0, r.output
    table = tmp / "map.csv"
    pd.DataFrame({"source": list(ODD), "target": list(ODD.values())}).to_csv(table, index=False)
    r = run_cli("train-head", tmp / "c.h5", "--out", tmp / "run", "--class-map", table, *FAST)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "cache": tmp / "c.h5", "run": tmp / "run", "map": table}


def test_odd_class_names_are_recorded_as_they_are(odd_run):
    config = json.loads((odd_run["run"] / "config.json").read_text())
    targets = list(ODD.values())
    assert config["class_names"] == targets
    assert config["class_map"]["targets"] == [{"name": t, "sources": [s.strip()]} for s, t in ODD.items()]
    assert config["class_map"]["sources"] == {t: [s] for s, t in ODD.items()}  # the folders' own names
    assert config["class_map"]["dropped"] == {} and config["class_map"]["spec"] == str(odd_run["map"])
    command = config["command"]
    assert command[command.index("--class-map") + 1] == str(odd_run["map"])  # the rerun reads the same file
    test = json.loads((odd_run["run"] / "metrics.json").read_text())["test"]
    assert list(test["per_class"]) == targets and all(c["support"] for c in test["per_class"].values())


@pytest.mark.slow
def test_evaluate_and_split_from_keep_every_odd_class(odd_run):
    """The issue's case: evaluate read 'nevus, atypical' back as two classes and dropped 5 of 6 test images."""
    run, targets = odd_run["run"], list(ODD.values())
    trained = json.loads((run / "metrics.json").read_text())["test"]
    r = run_cli("evaluate", run)
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert saved["unmapped_classes"] == {} and saved["metrics"]["n"] == trained["n"]
    assert {t: c["support"] for t, c in saved["metrics"]["per_class"].items()} == \
        {t: c["support"] for t, c in trained["per_class"].items()}
    assert set(pd.read_csv(run / "eval-test" / "predictions.csv", keep_default_na=False)["true"]) == set(targets)
    again = odd_run["tmp"] / "again"
    r = run_cli("train-head", odd_run["cache"], "--out", again, "--split-from", run, *FAST)
    assert r.exit_code == 0, r.output
    config = json.loads((again / "config.json").read_text())
    assert config["class_names"] == targets and config["class_map"]["dropped"] == {}
    assert config["class_map"]["targets"] == json.loads((run / "config.json").read_text())["class_map"]["targets"]
    assert split_of(again).equals(split_of(run))
    assert json.loads((again / "metrics.json").read_text())["test"]["n"] == trained["n"]


@pytest.mark.slow
def test_predict_and_export_name_odd_classes_exactly(odd_run):
    images = sorted((odd_run["tmp"] / "data").rglob("*.jpg"))[:3]
    out = odd_run["tmp"] / "pred.csv"
    r = run_cli("predict", odd_run["run"], *images, "--out", out)
    assert r.exit_code == 0, r.output
    assert [c for c in pd.read_csv(out).columns if c.startswith("p_")] == [f"p_{t}" for t in ODD.values()]
    exported = odd_run["tmp"] / "keras"
    r = run_cli("export", odd_run["run"], "--format", "keras", "--out", exported)
    assert r.exit_code == 0, r.output
    labels = json.loads((exported / "labels.json").read_text())
    assert labels["class_names"] == list(ODD.values())
    assert recorded_map(labels) == recorded_map(json.loads((odd_run["run"] / "config.json").read_text()))


def test_a_spec_naming_an_odd_class_is_refused_naming_the_file_form(odd_run):
    out = odd_run["tmp"] / "spec"
    r = run_cli("train-head", odd_run["cache"], "--out", out, "--class-map", "n=nevus, atypical;other=*", *FAST)
    assert r.exit_code == 1 and "CSV file" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()
