"""fine-tune on a real (tiny) head run: training effect, what stays frozen, split discipline, resume and the
CLI's bad-input paths. The session fixtures `ham_run` and `tuned` live in conftest.py (serve tests use them too);
the model it trains (classifier.py) is tested in test_classifier.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import OPTS, run_cli, train_loss

from bottleneck.backbones.registry import get_spec, layer_groups
from bottleneck.cache.store import CacheConfig
from bottleneck.errors import InputError
from bottleneck.models.classifier import assemble_model, rebuild_backbone
from bottleneck.models.finetune import FineTuneOptions, fine_tune
from bottleneck.runs.directory import load_run


def test_fine_tune_leaves_a_run_and_lowers_the_training_loss(ham_run, tuned):
    import keras

    r = tuned["result"]
    d = r.run_dir
    for name in ("config.json", "split.csv", "history.csv", "metrics.json", "predictions.csv", "curves.png",
                 "confusion.png", "report.md", "model.keras"):
        assert (d / name).is_file(), name
    assert not (d / "checkpoint.keras").exists() and not (d.parent / f".{d.name}.tmp").exists()
    config = json.loads((d / "config.json").read_text())
    assert config["source_run"]["path"] == str(ham_run["run"].resolve())
    assert config["unfrozen"]["groups"] == 2 and config["options"]["lr"] == 1e-5
    assert (d / "split.csv").read_text() == (ham_run["run"] / "split.csv").read_text()
    metrics = json.loads((d / "metrics.json").read_text())
    assert {"val", "test", "head_only"} <= set(metrics) and "balanced_accuracy" in metrics["test"]
    report = (d / "report.md").read_text()
    assert "head only (cached features)" in report and "fine-tuned (from images)" in report
    assert len(pd.read_csv(d / "history.csv")) == r.epochs_run

    model = keras.saving.load_model(d / "model.keras")
    assert "bottleneck>" not in json.dumps(model.get_config())  # built-in layers only: loads without our code
    history = pd.read_csv(d / "history.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] - 0.02  # it learns the training images
    _, head = load_run(ham_run["run"], calibrate=False)  # fine-tune starts from the head as trained
    before = assemble_model(CacheConfig(**config["cache"]["config"]), head)
    assert train_loss(before, ham_run, tuned["paths"]) == pytest.approx(history["loss"].iloc[0], abs=0.05)


def test_frozen_groups_stay_and_unfrozen_groups_change(ham_run, tuned):
    import keras

    config = json.loads((tuned["result"].run_dir / "config.json").read_text())
    # Seeded: the same initial weights as fine-tune's.
    original = rebuild_backbone(CacheConfig(**config["cache"]["config"]))
    tuned_backbone = keras.saving.load_model(tuned["result"].run_dir / "model.keras").get_layer("vgg16")
    groups = layer_groups(original, get_spec("vgg16"))
    for i, group in enumerate(groups):
        for layer in group:
            if not layer.weights:
                continue
            diff = max(float(np.abs(a - b).max()) for a, b in
                       zip(layer.get_weights(), tuned_backbone.get_layer(layer.name).get_weights()))
            if i < len(groups) - 2:
                assert diff == 0, layer.name
            else:
                assert diff > 0, layer.name


def test_the_test_split_is_never_read_for_training(tuned):
    read, paths = set(tuned["read"]), tuned["paths"]
    assert read and read <= paths["train"] | paths["val"]
    assert not read & paths["test"]
    failed = tuned["result"].failed
    assert [f["stage"] for f in failed] == ["evaluation"] and failed[0]["split"] == "test"
    assert tuned["bad_test"].endswith(failed[0]["path"])
    metrics = tuned["result"].metrics
    assert metrics["test"]["n"] == len(paths["test"]) - 1  # evaluated without it, and said so


@pytest.mark.slow
def test_resume_continues_an_interrupted_fine_tune(ham_run):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    out = ham_run["tmp"] / "resumed"
    with pytest.raises(KeyboardInterrupt):
        fine_tune(ham_run["run"], FineTuneOptions(out=out, **{**OPTS, "epochs": 2}), callbacks=[Interrupt()])
    tmp = out.with_name(f".{out.name}.tmp")
    assert json.loads((tmp / "progress.json").read_text())["epoch"] == 1 and not out.exists()
    with pytest.raises(InputError, match="already exists|nothing to resume"):
        fine_tune(ham_run["run"], FineTuneOptions(out=ham_run["tmp"] / "never", resume=True, **OPTS))
    r = fine_tune(ham_run["run"], FineTuneOptions(out=out, resume=True, **{**OPTS, "epochs": 2}))
    assert r.epochs_run == 2 and len(pd.read_csv(out / "history.csv")) == 2 and not tmp.exists()


@pytest.mark.slow
def test_cli_fine_tune(ham_run):
    out = ham_run["tmp"] / "cli-ft"
    r = run_cli("fine-tune", ham_run["run"], "--epochs", 1, "--batch-size", 8, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["epochs_run"] == 1
    assert "fine-tuned (test)" in r.output


def test_cli_fine_tune_bad_input(ham_run, tmp_path):
    r = run_cli("fine-tune", tmp_path / "no-such-run")
    assert r.exit_code == 1 and "does not exist" in r.output and len(r.output.strip().splitlines()) == 1
    out = tmp_path / "too-many"
    r = run_cli("fine-tune", ham_run["run"], "--unfreeze", 9, "--out", out)
    assert r.exit_code == 1 and "more than the 5 layer groups of vgg16" in r.output
    assert not out.exists() and not list(tmp_path.glob(".too-many*"))
    r = run_cli("fine-tune", ham_run["run"], "--unfreeze", "most", "--out", out)
    assert r.exit_code == 1 and "--unfreeze" in r.output
    r = run_cli("fine-tune", ham_run["run"], "--precision", "half", "--out", out)
    assert r.exit_code == 1 and "--precision should be one of auto, float32, bfloat16, float16" in r.output
    assert not out.exists()
