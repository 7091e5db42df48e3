"""Compute precision and XLA: chosen from the CPU's flags (never bf16 where it is emulated, unless asked), recorded in
the cache, followed by `auto`, refused when changed; bf16 features agree with float32 ones, and no feature depends
on the batch size. These run on every machine: an explicit bfloat16 is emulated where the CPU lacks it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import OPTS, REAL_FASTEST_NATIVE, TINY_ARGS, extract_opts, run_cli, write_image

from bottleneck.backbones import precision
from bottleneck.backbones.precision import (
    cpu_flags,
    fastest_native,
    model_precision,
    native_bf16,
    resolve_precision,
    resolve_xla,
)
from bottleneck.backbones.registry import create_backbone
from bottleneck.cache.store import load_cache
from bottleneck.errors import BottleneckWarning, InputError
from bottleneck.extract.run import extract
from bottleneck.images.index import build_index
from bottleneck.models.classifier import set_precision
from bottleneck.models.serve import load_served
from bottleneck.runs.directory import load_keras

# /proc/cpuinfo lines of the two kinds of machine we run on (flags shortened)
EPYC_BF16 = "processor\t: 0\ncpu family\t: 25\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\ncpu family\t: 23\nflags\t\t: fpu sse2 avx2 fma\n"
emulated_ok = pytest.mark.filterwarnings("ignore::bottleneck.errors.BottleneckWarning")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_native_bf16_is_read_from_the_cpu_flags():
    bf16, avx2 = cpu_flags(EPYC_BF16), cpu_flags(EPYC_AVX2)
    assert "avx512_bf16" in bf16 and native_bf16(bf16) and not native_bf16(avx2)
    assert native_bf16(frozenset({"amx_bf16"}))
    assert fastest_native(gpu=False, flags=bf16) == "bfloat16"
    assert fastest_native(gpu=False, flags=avx2) == "float32"
    assert fastest_native(gpu=True, flags=avx2) == "float16"
    assert cpu_flags("no flags here") == frozenset()


def test_auto_follows_the_cache_else_the_fastest_native_and_warns_only_when_emulated(monkeypatch):
    monkeypatch.setattr(precision, "fastest_native", REAL_FASTEST_NATIVE)
    avx2, bf16 = cpu_flags(EPYC_AVX2), cpu_flags(EPYC_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on any of these
        assert resolve_precision("auto", None, gpu=False, flags=avx2) == "float32"  # auto never emulates
        assert resolve_precision("auto", None, gpu=False, flags=bf16) == "bfloat16"
        assert resolve_precision("auto", "float32", gpu=False, flags=bf16) == "float32"  # the cache decides
        assert resolve_precision("bfloat16", None, gpu=False, flags=bf16) == "bfloat16"
    with pytest.warns(BottleneckWarning, match="bfloat16 is emulated on this CPU"):
        assert resolve_precision("bfloat16", None, gpu=False, flags=avx2) == "bfloat16"
    with pytest.warns(BottleneckWarning, match="float16 is emulated"):
        assert resolve_precision("float16", None, gpu=False, flags=bf16) == "float16"
    assert not resolve_xla("auto", "inception_v3", "float32") and not resolve_xla("auto", "mobilenet_v2", "float32")
    assert not resolve_xla("auto", "inception_v3", "bfloat16") and resolve_xla("auto", "vgg16", "float32", True)
    assert resolve_xla("auto", "inception_v3", "float32", recorded=False) is False
    assert resolve_xla("on", "vgg16", "bfloat16")


@pytest.mark.slow
def test_this_machine_gets_bf16_by_auto_only_when_its_cpu_has_it(tmp_path, class_tree, monkeypatch):
    monkeypatch.setattr(precision, "fastest_native", REAL_FASTEST_NATIVE)  # conftest pins auto to float32
    s = extract(build_index(class_tree), extract_opts(tmp_path))
    assert s.precision == ("bfloat16" if native_bf16() else "float32")
    assert load_cache(s.cache).config.precision == s.precision


@emulated_ok
@pytest.mark.slow
def test_bf16_features_agree_with_float32_ones_from_a_saved_weights_file(tmp_path, class_tree):
    weights = tmp_path / "vgg16-32.weights.h5"
    create_backbone("vgg16", "none", 32, seed=7).save_weights(weights)
    base = dict(weights=str(weights), dtype="float32")
    a = extract(build_index(class_tree), extract_opts(tmp_path, cache=tmp_path / "f32.h5", precision="float32", **base))
    b = extract(build_index(class_tree), extract_opts(tmp_path, cache=tmp_path / "bf16.h5", precision="bfloat16",
                                                      **base))
    assert (a.precision, b.precision, b.extracted) == ("float32", "bfloat16", a.extracted)
    f32, bf16 = load_cache(a.cache), load_cache(b.cache)
    assert list(f32.image_ids) == list(bf16.image_ids) and bf16.config.precision == "bfloat16"
    assert cosines(f32.features, bf16.features).min() >= 0.999
    assert not np.array_equal(f32.features, bf16.features)  # it did compute in another precision

    # auto extends the bf16 cache in bf16; asking for float32 is refused with both values and the fix
    write_image(class_tree / "mel" / "late.jpg", seed=91)
    more = extract(build_index(class_tree), extract_opts(tmp_path, cache=b.cache, **base))
    assert (more.precision, more.extracted) == ("bfloat16", 1)
    write_image(class_tree / "mel" / "later.jpg", seed=92)
    r = run_cli("extract", class_tree, *TINY_ARGS, "--weights", weights, "--dtype", "float32", "--precision",
                "float32", "--cache", b.cache)
    assert r.exit_code == 1
    assert "compute precision bfloat16 (cache) vs float32 (this run)" in r.output and "`auto`" in r.output
    assert len(load_cache(b.cache).labels) == len(bf16.labels) + 1


@pytest.mark.slow
def test_features_do_not_depend_on_the_batch_size(tmp_path, class_tree):
    feats = []
    for bs in (1, 7, 32):
        s = extract(build_index(class_tree), extract_opts(tmp_path, cache=tmp_path / f"b{bs}.h5", batch_size=bs))
        feats.append(load_cache(s.cache))
    for other in feats[1:]:
        assert list(other.image_ids) == list(feats[0].image_ids)
        np.testing.assert_allclose(other.features, feats[0].features, rtol=2e-3, atol=1e-4)  # float16 storage


@pytest.mark.slow
def test_xla_gives_the_same_features_and_is_recorded(tmp_path, class_tree):
    off = extract(build_index(class_tree), extract_opts(tmp_path, cache=tmp_path / "off.h5", xla="off",
                                                       dtype="float32"))
    on = extract(build_index(class_tree), extract_opts(tmp_path, cache=tmp_path / "on.h5", xla="on", dtype="float32"))
    assert (off.xla, on.xla) == (False, True)
    a, b = load_cache(off.cache), load_cache(on.cache)
    assert (a.config.xla, b.config.xla) == (False, True)
    np.testing.assert_allclose(b.features, a.features, rtol=1e-4, atol=1e-6)
    r = run_cli("info", on.cache)
    assert "  xla: on" in r.output and f"  precision: {on.precision}" in r.output


@emulated_ok
@pytest.mark.slow
def test_predict_in_bf16_agrees_with_float32(ham_run, tmp_path):
    served = load_served(ham_run["run"])
    model16, used = set_precision(served.model, "bfloat16")
    assert used == "bfloat16" and model_precision(served.model.get_layer("vgg16")) == "float32"
    assert model_precision(model16.get_layer("vgg16")) == "bfloat16"
    assert model16.get_layer("head").compute_dtype == "float32" and model16.output.dtype == "float32"
    assert set_precision(model16, "bfloat16")[0] is model16
    foreign = served.model.get_layer("head")  # any Keras model not assembled by bottleneck
    assert set_precision(foreign, "bfloat16", required=False) == (foreign, "as saved")
    with pytest.raises(InputError, match="cannot be run in bfloat16; pass --precision float32"):
        set_precision(foreign, "bfloat16")
    out = {}
    for name in ("float32", "bfloat16"):
        r = run_cli("predict", ham_run["run"], ham_run["root"], "--precision", name, "--out",
                    tmp_path / f"{name}.csv")
        assert r.exit_code == 0, r.output
        assert f"backbone computed in {name}" in r.output
        frame = pd.read_csv(tmp_path / f"{name}.csv")
        out[name] = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
    both = ~np.isnan(out["float32"]).any(1)
    assert both.sum() >= 10 and np.abs(out["float32"][both] - out["bfloat16"][both]).max() < 0.02


@emulated_ok
@pytest.mark.slow
def test_fine_tune_in_bf16_records_it_and_keeps_the_head_float32(ham_run, tmp_path):
    out = tmp_path / "ft16"
    r = run_cli("fine-tune", ham_run["run"], "--precision", "bfloat16", "--epochs", 1, "--lr", OPTS["lr"],
                "--batch-size", 8, "--no-augment", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["precision"] == "bfloat16" and "--precision" in config["command"]
    model = load_keras(out / "model.keras")
    assert model_precision(model.get_layer("vgg16")) == "bfloat16"
    assert model.get_layer("head").compute_dtype == "float32"


def test_a_bad_precision_or_xla_is_one_line_and_writes_nothing(tmp_path, class_tree, ham_run):
    out = tmp_path / "out"
    for option, value in (("--precision", "half"), ("--xla", "maybe")):
        r = run_cli("extract", class_tree, *TINY_ARGS, option, value, "--cache", out / "c.h5")
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert f"{option} should be one of auto, " in r.output and repr(value) in r.output
    r = run_cli("predict", ham_run["run"], class_tree, "--precision", "half", "--out", out / "p.csv")
    assert r.exit_code == 1 and "--precision should be one of" in r.output
    assert not out.exists()
