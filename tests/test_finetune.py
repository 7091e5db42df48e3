"""fine-tune on a real (tiny) head run: training effect, what stays frozen, BN statistics, split discipline,
resume, provenance checks and the CLI's bad-input paths."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import bottleneck.image_data as image_data
from bottleneck.backbones import REGISTRY, get_spec, layer_groups
from bottleneck.cache import load_cache
from bottleneck.cli import app
from bottleneck.errors import InputError, WeightsError
from bottleneck.cache import CacheConfig
from bottleneck.rundir import load_run
from bottleneck.finetune import FineTuneOptions, fine_tune
from bottleneck.classifier import assemble_model, preprocess_layer, rebuild_backbone, unfreeze
from conftest import TINY, make_ham

runner = CliRunner()

# lr 1e-5 as in the default: a random-init VGG16 diverges at 1e-4. No augmentation, so that losses compare.
OPTS = dict(epochs=3, patience=3, lr=1e-5, batch_size=8, augment=False, progress=False)


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def ham_run(tmp_path_factory):
    """A HAM10000-style tree (9 lesions x 2 images, 3 classes), its vgg16/32px cache and a head run."""
    from bottleneck.dataset import build_index
    from bottleneck.extract import ExtractOptions, extract
    from bottleneck.heads import HeadConfig
    from bottleneck.runs import RunOptions, train_head_run

    tmp = tmp_path_factory.mktemp("ham")
    root = make_ham(tmp / "ham", n_lesions=9, images_per_lesion=2)
    extract(build_index(root), ExtractOptions(**TINY, cache=tmp / "c.h5", progress=False))
    # No standardisation, no dropout: a random-init VGG's features vary by ~1e-3 between images, and standardising
    # them turns any backbone update into huge logits; without dropout the training loss is a clean signal.
    train_head_run(tmp / "c.h5", HeadConfig(epochs=3, patience=2, hidden=(16,), standardize=False, dropout=0.0),
                   RunOptions(out=tmp / "run", progress=False))
    return {"root": root, "cache": tmp / "c.h5", "run": tmp / "run", "tmp": tmp}


def split_paths(ham_run) -> dict[str, set[str]]:
    data = load_cache(ham_run["cache"], features=False)
    split = pd.read_csv(ham_run["run"] / "split.csv").set_index("image_id")["split"]
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for image_id, rel in zip(data.image_ids, data.paths):
        out[split[image_id]].add(str(ham_run["root"] / rel))
    return out


@pytest.fixture(scope="session")
def tuned(ham_run):
    """One fine-tune, with one test image corrupted first and every image the training pipeline reads recorded."""
    paths = split_paths(ham_run)
    bad_test = sorted(paths["test"])[0]
    with open(bad_test, "wb") as f:
        f.write(b"this is not a JPEG any more")
    import keras

    read: list[str] = []
    training = [True]  # reads until training ends; evaluation, which reads every split, comes after
    real = image_data.load_image

    def recording(path, size=None):
        if training[0]:
            read.append(str(path))
        return real(path, size)

    class EndOfTraining(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            training[0] = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_data, "load_image", recording)  # the one image pipeline's loader
        r = fine_tune(ham_run["run"], FineTuneOptions(out=ham_run["tmp"] / "ft", **OPTS), callbacks=[EndOfTraining()])
    return {"result": r, "read": read, "bad_test": bad_test, "paths": paths}


def train_loss(model, ham_run, paths) -> float:
    from bottleneck.images import load_image

    data = load_cache(ham_run["cache"], features=False)
    label = {str(ham_run["root"] / p): y for p, y in zip(data.paths, data.labels)}
    files = sorted(paths["train"])
    x = np.stack([load_image(p, 32)[0] for p in files]).astype(np.float32)
    p = model.predict(x, verbose=0)
    y = np.array([label[f] for f in files])
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())


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
    _, head = load_run(ham_run["run"])
    before = assemble_model(CacheConfig(**config["cache"]["config"]), head)
    assert train_loss(before, ham_run, tuned["paths"]) == pytest.approx(history["loss"].iloc[0], abs=0.05)


def test_frozen_groups_stay_and_unfrozen_groups_change(ham_run, tuned):
    import keras

    config = json.loads((tuned["result"].run_dir / "config.json").read_text())
    original = rebuild_backbone(CacheConfig(**config["cache"]["config"]))  # seeded: the same initial weights as fine-tune's
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


def test_batchnorm_statistics_do_not_move(tmp_path):
    """mobilenet_v2 (weights none: this looks at variables, not features) with every group unfrozen."""
    import keras

    from bottleneck.heads import HeadConfig, build_head

    cc = CacheConfig(backbone="mobilenet_v2", weights="none", weights_sha256="", seed=0, input_size=32,
                     pooling="avg", preprocessing=get_spec("mobilenet_v2").preprocessing, dtype="float32",
                     num_features=1280)
    backbone = rebuild_backbone(cc)
    model = assemble_model(cc, build_head(1280, 3, HeadConfig(hidden=(4,), standardize=False)), backbone)
    info = unfreeze(backbone, "mobilenet_v2", "all")
    assert info["frozen_batchnorm_layers"] > 0
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bn = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    stats = [v.numpy().copy() for l in bn for v in (l.moving_mean, l.moving_variance)]
    conv = backbone.get_layer("Conv1").kernel.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 3, epochs=2, batch_size=4, verbose=0)
    after = [v.numpy() for l in bn for v in (l.moving_mean, l.moving_variance)]
    assert all(np.array_equal(a, b) for a, b in zip(stats, after))
    assert not np.array_equal(conv, backbone.get_layer("Conv1").kernel.numpy())  # the backbone did train


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


def test_a_weights_file_must_have_the_recorded_hash(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not the weights the cache was made with")
    cc = CacheConfig(backbone="vgg16", weights=str(weights), weights_sha256="ab" * 32, seed=0, input_size=32,
                     pooling="avg", preprocessing=get_spec("vgg16").preprocessing, dtype="float16", num_features=512)
    with pytest.raises(WeightsError, match="ab" * 32):
        rebuild_backbone(cc)
    with pytest.raises(WeightsError, match="missing"):
        rebuild_backbone(replace(cc, weights=str(tmp_path / "gone.h5")))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_preprocess_layer_is_preprocess_input(name):
    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = np.asarray(get_spec(name).preprocess_fn()(x.copy()))
    np.testing.assert_allclose(np.asarray(preprocess_layer(name)(x)), expected, atol=1e-4)


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
    r = run_cli("fine-tune", ham_run["run"], "--mixed-precision", "--out", out)
    assert r.exit_code == 1 and "needs a GPU" in r.output and not out.exists()
