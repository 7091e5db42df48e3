"""evaluate: a head run on its own test split (matching what train-head reported) or on an external cache,
classes mapped by name; other backbone configurations and unknown runs refused."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import copy_run, feature_cache, run_cli

from bottleneck.errors import CacheMismatchError
from bottleneck.heads.class_map import resolve
from bottleneck.runs.evaluate import by_name, evaluate_run


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
    other = feature_cache(tmp_path / "other.h5", counts={"MEL": 10, "NV": 10, "vasc": 4}, seed=0)
    with h5py.File(other, "a") as f:  # other images: synthetic caches number their SHA-256s alike
        f["sha256"][:] = np.array([f"e{k:063x}" for k in range(len(f["sha256"]))], dtype=object)
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
