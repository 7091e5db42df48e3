"""predict and export: raw images in, probabilities out, equal to the head on the cache; export parity."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, write_image  # the session fixtures ham_run and tuned come from conftest.py

import bottleneck.models.serve as serve
from bottleneck.cache.store import load_cache
from bottleneck.errors import BottleneckError
from bottleneck.heads.model import predict_proba
from bottleneck.models.serve import export, predict
from bottleneck.runs.directory import load_run, read_config


def head_on_cache(ham_run) -> dict[str, np.ndarray]:
    """Absolute image path -> the head's probabilities on its cached (float16) features."""
    data = load_cache(ham_run["cache"])
    _, head = load_run(ham_run["run"])
    proba = predict_proba(head, data.features)
    return {str(ham_run["root"] / p): q for p, q in zip(data.paths, proba)}


@pytest.mark.slow
def test_predict_a_folder_with_bad_files_lists_them(ham_run, tmp_path):
    folder = tmp_path / "new"
    for i in range(3):
        write_image(folder / "sub" / f"lesion{i}.jpg", seed=500 + i, size=(50, 40))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "p.csv"
    for tta in (False, True):
        r = predict(ham_run["run"], [folder], out=out, tta=tta, batch_size=2)
        df = pd.read_csv(out, keep_default_na=False)
        threshold = ["mel_threshold", "mel_at_threshold"] * (read_config(ham_run["run"])["operating_point"]["threshold"]
                                                             is not None)
        assert len(df) == 5 and list(df.columns) == ["path", "predicted", "decision_rule", "most_probable", "p_bkl",
                                                     "p_mel", "p_nv", *threshold, "error"]
        bad = df[df["error"] != ""]
        assert sorted(bad["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["empty.jpg", "notes.txt"]
        assert sorted(p.rsplit("/", 1)[-1] for p, _ in r.failed) == ["empty.jpg", "notes.txt"]
        good = df[df["error"] == ""]
        probs = good[["p_bkl", "p_mel", "p_nv"]].astype(float).to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        names = np.array(["bkl", "mel", "nv"])
        assert (good["most_probable"] == names[probs.argmax(1)]).all()
        weights = np.array(r.rule["decision_weights"] or [1.0, 1.0, 1.0])  # the run's rule, named in every row
        assert (good["predicted"] == names[(probs * weights).argmax(1)]).all()
        assert set(df["decision_rule"]) == {read_config(ham_run["run"])["decision_rule"]} == {r.rule["rule"]}


@pytest.mark.slow
def test_tta_averages_the_eight_dihedral_views(ham_run, tmp_path):
    img = write_image(tmp_path / "a.png", seed=7, size=(32, 32))
    plain = predict(ham_run["run"], [img]).frame
    tta = predict(ham_run["run"], [img], tta=True).frame
    served = serve.load_served(ham_run["run"])
    from bottleneck.images.decode import load_image

    x = load_image(img, 32)[0].astype(np.float32)
    views = [np.rot90(x, k) for k in range(4)] + [np.rot90(x, k)[:, ::-1] for k in range(4)]
    expected = served.model.predict(np.stack(views), verbose=0).mean(0)
    cols = ["p_bkl", "p_mel", "p_nv"]
    np.testing.assert_allclose(tta[cols].to_numpy()[0], expected, atol=1e-5)
    assert not np.allclose(plain[cols].to_numpy()[0], tta[cols].to_numpy()[0], atol=1e-7)


def test_predict_with_a_head_run_equals_the_head_on_the_cache(ham_run):
    r = predict(ham_run["run"], [ham_run["root"]])
    reference = head_on_cache(ham_run)
    ok = r.frame[r.frame["error"] == ""]
    assert len(ok) >= len(reference) - 1  # the fine-tune tests may have corrupted one test image
    got = ok[["p_bkl", "p_mel", "p_nv"]].to_numpy()
    want = np.stack([reference[p] for p in ok["path"]])
    np.testing.assert_allclose(got, want, atol=2e-2)  # cached features are float16


# TFLite's converter alone takes ~20 s: that format runs with `make test-slow`
@pytest.mark.parametrize("fmt", ["keras", "savedmodel", pytest.param("tflite", marks=pytest.mark.slow)])
def test_export_round_trip_parity(ham_run, fmt):
    import keras

    from bottleneck.images.decode import load_image
    from bottleneck.util.tfimport import tensorflow

    out = ham_run["tmp"] / f"export-{fmt}"
    r = export(ham_run["run"], fmt, out=out)
    assert r.worst_difference <= r.tolerance == 2e-2 and r.images_checked > 0
    labels = json.loads((out / "labels.json").read_text())
    assert labels["class_names"] == ["bkl", "mel", "nv"] and labels["input_size"] == 32
    assert "inside the model" in labels["preprocessing"]
    reference = head_on_cache(ham_run)
    files = sorted(reference)[:4]
    x = np.stack([load_image(f, 32)[0] for f in files]).astype(np.float32)  # raw RGB 0..255
    if fmt == "keras":
        got = keras.saving.load_model(out / "model.keras").predict(x, verbose=0)
    elif fmt == "savedmodel":
        loaded = tensorflow().saved_model.load(str(out))  # keep a reference: its variables die with it
        got = loaded.serve(x).numpy()
    else:
        got = serve._run_tflite(out / "model.tflite", x)
    np.testing.assert_allclose(got, np.stack([reference[f] for f in files]), atol=2e-2)


@pytest.mark.slow
def test_export_refuses_when_parity_fails_and_writes_nothing(ham_run, monkeypatch):
    monkeypatch.setattr(serve, "HEAD_RUN_ATOL", 0.0)
    out = ham_run["tmp"] / "never-exported"
    with pytest.raises(BottleneckError, match="parity check failed.*tolerance 0.0"):
        export(ham_run["run"], "keras", out=out)
    assert not out.exists() and not out.with_name(f".{out.name}.tmp").exists()


@pytest.mark.slow
def test_predict_and_export_a_fine_tuned_run(tuned, tmp_path):
    import keras

    run = tuned["result"].run_dir
    r = export(run, "keras", out=tmp_path / "exp")
    assert r.tolerance == serve.FINETUNE_RUN_ATOL and r.worst_difference <= r.tolerance
    img = sorted(tuned["paths"]["train"])[0]
    p = predict(run, [img]).frame
    from bottleneck.images.decode import load_image

    x = load_image(img, 32)[0][None].astype(np.float32)
    want = keras.saving.load_model(tmp_path / "exp" / "model.keras").predict(x, verbose=0)[0]
    np.testing.assert_allclose(p[["p_bkl", "p_mel", "p_nv"]].to_numpy()[0], want, atol=1e-5)
    # the export folder itself serves too (labels.json beside model.keras)
    again = predict(tmp_path / "exp", [img]).frame
    np.testing.assert_allclose(again[["p_bkl", "p_mel", "p_nv"]].to_numpy(), p[["p_bkl", "p_mel", "p_nv"]].to_numpy(),
                               atol=1e-6)


@pytest.mark.slow
def test_cli_predict(ham_run, tmp_path):
    out = tmp_path / "preds.csv"
    r = run_cli("predict", ham_run["run"], ham_run["root"] / "HAM10000_images_part_1", "--out", out, "--tta")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 9 and "written:" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("predict", ham_run["run"], empty, "--out", tmp_path / "none.csv")
    assert r.exit_code == 1 and "no files found" in r.output and not (tmp_path / "none.csv").exists()
    r = run_cli("predict", tmp_path / "no-run", empty)
    assert r.exit_code == 1 and "error:" in r.output


def test_predict_follows_links_in_the_folders_it_is_given_once_each(ham_run, tmp_path):
    """A folder of links to images kept elsewhere (a common way to assemble a test set) is predicted; a loop is
    cut and a file reached twice is predicted once."""
    folder = tmp_path / "links"
    folder.mkdir()
    images = sorted((ham_run["root"] / "HAM10000_images_part_1").glob("*.jpg"))[:2]
    for image in images:
        (folder / image.name).symlink_to(image)
    (folder / "again").symlink_to(images[0])
    (folder / "loop").symlink_to(folder)
    frame = predict(ham_run["run"], [folder]).frame
    assert len(frame) == 2 and (frame["error"] == "").all()


@pytest.mark.slow
def test_cli_export(ham_run, tmp_path):
    r = run_cli("export", ham_run["run"], "--format", "keras", "--out", tmp_path / "k")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "k" / "model.keras").is_file() and "parity" in r.output
    r = run_cli("export", ham_run["run"], "--format", "onnx", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "--format should be one of keras, savedmodel, tflite" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    r = run_cli("export", ham_run["run"], "--format", "keras", "--out", tmp_path / "k")
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.mark.slow
def test_export_tflite_prints_no_native_info_line(ham_run, tmp_path, capfd):
    """TensorFlow Lite's C++ once printed "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
    file descriptor 2 during the parity check; only --verbose shows such lines."""
    r = run_cli("export", ham_run["run"], "--format", "tflite", "--out", tmp_path / "lite", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lite" / "model.tflite").is_file()
    captured = capfd.readouterr()
    assert "INFO: Created" not in captured.err + captured.out + r.output
