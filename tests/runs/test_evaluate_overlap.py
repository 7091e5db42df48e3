"""evaluate --cache on external data that the run may have seen: images with the bytes, image id or lesion of a
training or validation image, or near copies of one (perceptual fingerprint, features), are left out and counted by
check (kept with --keep-overlap); test images of the run's own split are kept; nothing left is refused; the majority
baseline is the training split's; predictions.csv recomputes the metrics exactly."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import feature_cache, restamp, run_cli

from bottleneck.cache import load_cache
from bottleneck.heads.model import HeadConfig
from bottleneck.images import NEAR_BITS, NEAR_COSINE, dihedral_variants
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.runs.evaluate import evaluate_run

COUNTS = {"bcc": 30, "mel": 30, "nv": 60}  # nv is the training majority
TEXT_COLUMNS = ("image_id", "group", "sha256")


def random_hash(seed: int) -> int:
    """A fingerprint-like 64-bit number (bit 0 clear, as every perceptual hash): two of them differ in ~32 bits."""
    return int(np.random.default_rng(seed).integers(1, 2**62)) << 1


def rewrite(path, **columns):
    """Edit a cache's row columns in place: image_id, group, sha256 (text), phash (ints), features ((N, D))."""
    with h5py.File(path, "a") as f:
        n = int(f.attrs["n_rows"])
        for name, values in columns.items():
            f[name][:n] = np.array(values, dtype=object if name in TEXT_COLUMNS else f[name].dtype)
    return path


def external(run, name, counts, seed, phash=True):
    """A cache of other images (other bytes, ids, lesions, features and, unless not `phash`, fingerprints)."""
    path = feature_cache(run["tmp"] / name, counts=counts, dim=16, seed=seed,
                         phash=(lambda k, c, i: random_hash(10_000 * seed + k)) if phash else None)
    n = sum(counts.values())
    return rewrite(restamp(path, salt=name[0]), image_id=[f"{name[:-3]}-{k}" for k in range(n)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    cache = feature_cache(tmp / "train.h5", counts=COUNTS, dim=16, source="ham10000",
                          phash=lambda k, c, i: random_hash(k))
    out = train_head_run(cache, HeadConfig(epochs=6, patience=3, hidden=(16,)),
                         RunOptions(out=tmp / "run", progress=False)).run_dir
    split = pd.read_csv(out / "split.csv", dtype=str).set_index("image_id")["split"]
    return {"tmp": tmp, "cache": cache, "run": out, "split": split}


def ids_of(run, *splits):
    return set(run["split"].index[run["split"].isin(splits)])


def test_a_copy_of_the_training_cache_keeps_only_the_test_rows(run):
    copy = shutil.copy(run["cache"], run["tmp"] / "copy.h5")
    r = run_cli("evaluate", run["run"], "--cache", copy)
    assert r.exit_code == 0, r.output
    leaked, test = ids_of(run, "train", "val"), ids_of(run, "test")
    line = (f"{len(leaked)} of {len(leaked) + len(test)} images of copy.h5 are in this run's training or validation "
            f"data or near copies of images there (same bytes: {len(leaked)}, same image id: 0, same lesion: 0, "
            "similar picture: 0, similar features: 0) and were left out")
    assert line in r.output
    saved = json.loads((run["run"] / "eval-copy" / "metrics.json").read_text())
    assert saved["overlap_checked"] and saved["overlap"]["same_bytes"] == len(leaked)
    # each check finds the copies on its own too: the count is the first's
    assert set(saved["overlap"]["found_by"].values()) == {len(leaked)} and not saved["overlap"]["not_compared"]
    assert saved["overlap"]["excluded"] == len(leaked) and saved["metrics"]["n"] == len(test)
    assert set(pd.read_csv(run["run"] / "eval-copy" / "excluded.csv")["image_id"]) == leaked
    assert set(pd.read_csv(run["run"] / "eval-copy" / "predictions.csv")["image_id"]) == test
    assert "left out" in (run["run"] / "eval-copy" / "report.md").read_text()
    # the held-out rows score as on the run's own test split
    own = json.loads((run["run"] / "metrics.json").read_text())["test"]
    assert saved["metrics"]["confusion_matrix"] == own["confusion_matrix"]


def test_a_cache_without_overlap_keeps_every_image(run):
    other = external(run, "fresh.h5", {"bcc": 6, "MEL": 6, "nv": 6}, seed=3)
    r = evaluate_run(run["run"], other)
    assert r.overlap.checked and r.overlap.excluded == 0 and r.metrics["n"] == 18
    assert list(r.overlap.skipped) == ["same_lesion"] and not any(r.overlap.found_by.values())  # no lesion ids
    message = r.overlap.message("fresh.h5")
    assert "none of the 18 images of fresh.h5 is in this run's training or validation data" in message
    assert "similar picture: 0, similar features: 0" in message and "another photograph of the same lesion" in message
    assert not (r.out_dir / "excluded.csv").exists()


def test_a_cache_without_fingerprints_skips_that_check_and_says_how_to_add_them(run):
    other = external(run, "older.h5", {"bcc": 4, "mel": 4, "nv": 4}, seed=6, phash=False)
    r = run_cli("evaluate", run["run"], "--cache", other)
    assert r.exit_code == 0, r.output
    saved = json.loads((run["run"] / "eval-older" / "metrics.json").read_text())["overlap"]
    assert list(saved["not_compared"]) == ["same_lesion", "similar_picture"] and saved["found"] == 0
    how = saved["not_compared"]["similar_picture"]
    assert "older.h5 has no perceptual fingerprints; rerun the `extract` command that wrote it to add them" in how
    assert "pictures not compared: older.h5 has no perceptual fingerprints" in r.output
    assert "similar picture" not in r.output.split("not compared")[0]  # not counted as zero: not compared


def test_a_cache_of_training_images_only_is_refused(run):
    data_sha = {}
    with h5py.File(run["cache"], "r") as f:
        for i, s in zip(f["image_id"].asstr()[:], f["sha256"].asstr()[:]):
            data_sha[i] = s
    train = sorted(ids_of(run, "train"))[:9]
    other = restamp(feature_cache(run["tmp"] / "seen.h5", counts={"bcc": 3, "mel": 3, "nv": 3}, dim=16),
                    sha256=[data_sha[i] for i in train])
    r = run_cli("evaluate", run["run"], "--cache", other)
    assert r.exit_code == 1
    assert "9 of 9 images of seen.h5 are in this run's training or validation data" in r.output
    assert "nothing is left to evaluate" in r.output
    assert not (run["run"] / "eval-seen").exists()


def test_same_lesion_counts_when_the_sources_agree(run):
    # other bytes, ids, pictures and features (another photograph of each lesion), the same lesion ids: comparable
    # only within one id namespace
    n, rng = sum(COUNTS.values()), np.random.default_rng(7)
    other = rewrite(restamp(shutil.copy(run["cache"], run["tmp"] / "relabelled.h5"), salt="e", source="isic2020"),
                    image_id=[f"r{k}" for k in range(n)], phash=[random_hash(50_000 + k) for k in range(n)],
                    features=rng.normal(0, 3, (n, 16)))
    r = evaluate_run(run["run"], other)
    assert r.overlap.excluded == 0 and not r.overlap.lesion_ids
    assert ("lesion ids not compared: sources ham10000 and isic2020 name lesions differently"
            in r.overlap.message("relabelled.h5"))
    restamp(other, source="isic2019")  # ISIC 2019's lesion_id column reuses HAM10000's lesion ids
    r = evaluate_run(run["run"], other, overwrite=True)
    leaked = ids_of(run, "train", "val")
    assert r.overlap.counts["same_lesion"] == r.overlap.excluded == len(leaked) and r.overlap.lesion_ids == "all"
    assert r.metrics["n"] == len(ids_of(run, "test"))
    assert (f"same bytes: 0, same image id: 0, same lesion: {len(leaked)}, similar picture: 0, similar features: 0)"
            in r.overlap.message("relabelled.h5"))
    listed = pd.read_csv(r.out_dir / "excluded.csv", dtype=str, keep_default_na=False)
    train = load_cache(run["cache"], features=False)
    group_of = dict(zip(train.image_ids, train.groups))
    assert set(listed["reason"]) == {"same lesion"}
    assert all(group_of[m] == g for m, g in zip(listed["matches"], listed["lesion_id"]))  # a training image of it
    assert set(listed["matches"]) <= leaked


def test_external_baseline_is_the_training_majority_or_says_it_is_not(run):
    other = external(run, "skewed.h5", {"bcc": 20, "mel": 5, "nv": 5}, seed=4)
    r = evaluate_run(run["run"], other)
    base = r.metrics["majority_baseline"]
    assert base["class"] == "nv" and base["accuracy"] == pytest.approx(5 / 30) and r.baseline_from == "training"
    saved = json.loads((r.out_dir / "metrics.json").read_text())
    assert saved["majority_baseline_from"] == "training"
    assert "most frequent class of the run's training split" in (r.out_dir / "report.md").read_text()

    moved = run["tmp"] / "moved.h5"
    shutil.move(run["cache"], moved)  # the run's training cache is gone: evaluate still runs, and says so
    try:
        out = run_cli("evaluate", run["run"], "--cache", other, "--overwrite")
    finally:
        shutil.move(moved, run["cache"])
    assert out.exit_code == 0, out.output
    assert "overlap of skewed.h5 with this run's training data could not be checked" in out.output
    saved = json.loads((r.out_dir / "metrics.json").read_text())
    assert saved["overlap_checked"] is False and saved["majority_baseline_from"] == "evaluated"
    assert saved["metrics"]["majority_baseline"]["class"] == "bcc" and saved["metrics"]["n"] == 30


def recomputed(predictions, class_names, split=None) -> tuple[float, float]:
    """Balanced accuracy and macro one-vs-rest ROC AUC from predictions.csv and the run's decision weights (its
    config.json) alone, with scikit-learn: predicted = argmax(p * decision weights)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    df = pd.read_csv(predictions, keep_default_na=False)
    if split is not None:
        df = df[df["split"] == split]
    y = df["true"].map({n: i for i, n in enumerate(class_names)}).to_numpy()
    p = df[[f"p_{n}" for n in class_names]].to_numpy()  # (N, C) float64, as written
    run = predictions.parent if (predictions.parent / "config.json").is_file() else predictions.parent.parent
    weights = json.loads((run / "config.json").read_text())["calibration"]["decision_weights"]
    pred = (p * np.asarray(weights)).argmax(axis=1)
    assert (df["predicted"].map({n: i for i, n in enumerate(class_names)}).to_numpy() == pred).all()
    return balanced_accuracy_score(y, pred), roc_auc_score(y, p, multi_class="ovr", average="macro")


def test_predictions_csv_recomputes_the_metrics_exactly(run):
    names = sorted(COUNTS)
    saved = json.loads((run["run"] / "metrics.json").read_text())["test"]
    bal, auc = recomputed(run["run"] / "predictions.csv", names, split="test")
    assert abs(bal - saved["balanced_accuracy"]) < 1e-12 and abs(auc - saved["roc_auc_macro"]) < 1e-12

    other = external(run, "exact.h5", {"bcc": 15, "mel": 15, "nv": 15}, seed=5)
    r = evaluate_run(run["run"], other)
    bal, auc = recomputed(r.out_dir / "predictions.csv", names)
    assert abs(bal - r.metrics["balanced_accuracy"]) < 1e-12 and abs(auc - r.metrics["roc_auc_macro"]) < 1e-12


@pytest.fixture(scope="module")
def kinds(run):
    """A cache of 120 images, 3 of them per check a copy of a training or validation image of one kind only (the
    byte copies also keep their features, found by two checks), the rest other images."""
    train = load_cache(run["cache"])
    leaked = [r for r, i in enumerate(train.image_ids) if run["split"][i] in ("train", "val")]
    n, rng = len(train.image_ids), np.random.default_rng(11)
    ids, sha = [f"k{k}" for k in range(n)], [f"f{k:063x}" for k in range(n)]
    groups, hashes = [f"K-{k}" for k in range(n)], [random_hash(90_000 + k) for k in range(n)]
    feats = rng.normal(0, 3, (n, 16))
    pick = dict(zip(["bytes", "id", "lesion", "picture", "features"], np.reshape(leaked[:15], (5, 3))))
    for r in pick["bytes"]:
        sha[r], feats[r] = train.sha256[r], train.features[r]
    for r in pick["id"]:
        ids[r] = train.image_ids[r]
    for r in pick["lesion"]:
        groups[r] = train.groups[r]
    for r in pick["picture"]:  # flipped and turned, then 3 bits off
        hashes[r] = int(dihedral_variants(train.phash[r])[0, 5]) ^ 0b111 << 20
    for r in pick["features"]:
        feats[r] = train.features[r] + rng.normal(0, 0.01, 16)
    path = rewrite(shutil.copy(run["cache"], run["tmp"] / "kinds.h5"), image_id=ids, sha256=sha, group=groups,
                   phash=hashes, features=feats)
    return {"path": path, "pick": pick, "train": train, "n": n}


def test_each_check_finds_its_kind_of_copy_and_counts_it(run, kinds):
    r = evaluate_run(run["run"], kinds["path"])
    o, train = r.overlap, kinds["train"]
    assert set(o.counts.values()) == {3} and o.excluded == 15 and not o.skipped
    assert o.found_by == {**o.counts, "similar_features": 6}  # the byte copies' features match too: counted once
    assert r.metrics["n"] == kinds["n"] - 15
    assert ("15 of 120 images of kinds.h5 are in this run's training or validation data or near copies of images "
            "there (same bytes: 3, same image id: 3, same lesion: 3, similar picture: 3, similar features: 3) and "
            "were left out; no check finds another photograph of the same lesion") in o.message("kinds.h5")
    listed = pd.read_csv(r.out_dir / "excluded.csv", keep_default_na=False)
    by = {reason: listed[listed["reason"] == reason] for reason in set(listed["reason"])}
    for kind, reason in [("bytes", "same bytes"), ("id", "same image id"), ("picture", "similar picture"),
                         ("features", "similar features")]:  # each listed with the training image it matches
        assert set(by[reason]["matches"]) == set(train.image_ids[kinds["pick"][kind]]), kind
    lesions = by["same lesion"]  # a training image of the lesion, and the lesion
    assert set(lesions["lesion_id"]) == set(train.groups[kinds["pick"]["lesion"]])
    assert all(train.groups[list(train.image_ids).index(m)] == g for m, g in zip(lesions["matches"],
                                                                                lesions["lesion_id"]))
    assert set(by["similar picture"]["bits"]) == {"3"}  # read as text: blank where another check matched
    assert (by["similar features"]["cosine"].astype(float) >= NEAR_COSINE).all()
    saved = json.loads((r.out_dir / "metrics.json").read_text())["overlap"]
    assert saved["similar_picture"] == 3 and saved["found_by"]["similar_features"] == 6
    assert saved["near_bits"] == NEAR_BITS and saved["near_cosine"] == NEAR_COSINE
    report = (r.out_dir / "report.md").read_text()
    assert "### Overlap with the run's training and validation data" in report
    assert f"| similar picture (fingerprint within {NEAR_BITS} bits, any flip or turn) | 3 | 3 |" in report


def test_keep_overlap_evaluates_the_copies_and_says_so(run, kinds):
    r = run_cli("evaluate", run["run"], "--cache", kinds["path"], "--keep-overlap")
    assert r.exit_code == 0, r.output
    assert "15 of 120 images of kinds.h5" in r.output
    assert "were kept (--keep-overlap): the metrics include them" in r.output
    out = run["run"] / "eval-kinds-overlap"  # never replaces the evaluation without them
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["n"] == kinds["n"]
    assert saved["overlap"]["kept"] and saved["overlap"]["found"] == 15 and saved["overlap"]["excluded"] == 0
    assert len(pd.read_csv(out / "overlap.csv")) == 15 and not (out / "excluded.csv").exists()
    assert len(pd.read_csv(out / "predictions.csv")) == kinds["n"]
    assert "were kept (`--keep-overlap`)" in (out / "report.md").read_text()


def smooth_image(path, seed: int, size=(96, 72)):
    """A real JPEG of smooth random colour (a 6x6 random grid, upsampled): its fingerprint is its own."""
    from PIL import Image

    grid = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize(size, Image.BICUBIC).save(path, quality=95)
    return path


@pytest.mark.slow
def test_real_copies_are_found_by_their_bytes_id_and_picture(tmp_path):
    """Real images through a real extract: a byte copy, a resized copy under the same name, and re-encoded,
    resized, flipped and turned copies of training images under new names are each found by the check that can;
    other images are not similar pictures. (Features of a random-weights backbone tell no images apart: kept.)"""
    from PIL import Image

    args = ["--backbone", "mobilenet_v2", "--image-size", "64", "--weights", "none", "--dtype", "float32", "--quiet"]
    for k in range(24):
        smooth_image(tmp_path / "train" / ("mel", "nv")[k % 2] / f"t{k:02d}.jpg", k)  # image id mel/t00.jpg ...
    assert run_cli("extract", tmp_path / "train", "--cache", tmp_path / "train.h5", *args).exit_code == 0
    run_dir = train_head_run(tmp_path / "train.h5", HeadConfig(epochs=2, patience=1, hidden=(8,)),
                             RunOptions(out=tmp_path / "run", progress=False)).run_dir
    split = pd.read_csv(run_dir / "split.csv", dtype=str).set_index("image_id")["split"]
    seen = sorted(split.index[split.isin(["train", "val"])])[:7]
    ext = tmp_path / "ext"
    copy = lambda i, name: ext / i.split("/")[0] / name  # noqa: E731  in the class folder of its original
    copy(seen[0], "bytes.jpg").parent.mkdir(parents=True, exist_ok=True)
    copy(seen[0], "bytes.jpg").write_bytes((tmp_path / "train" / seen[0]).read_bytes())
    opened = {i: Image.open(tmp_path / "train" / i).convert("RGB") for i in seen}
    made = {seen[1]: (seen[1].split("/")[1], opened[seen[1]].resize((80, 60))),  # the same name, resized
            seen[2]: ("reencoded.jpg", opened[seen[2]]), seen[3]: ("half.jpg", opened[seen[3]].resize((48, 36))),
            seen[4]: ("double.png", opened[seen[4]].resize((192, 144))),
            seen[5]: ("flipped.jpg", opened[seen[5]].transpose(Image.FLIP_LEFT_RIGHT)),
            seen[6]: ("turned.jpg", opened[seen[6]].transpose(Image.ROTATE_90))}
    for i, (name, img) in made.items():
        copy(i, name).parent.mkdir(parents=True, exist_ok=True)
        img.save(copy(i, name), **({"quality": 70} if name.endswith(".jpg") else {}))
    for k in range(6):
        smooth_image(ext / ("mel", "nv")[k % 2] / f"other{k}.jpg", 1000 + k)
    assert run_cli("extract", ext, "--cache", tmp_path / "ext.h5", *args).exit_code == 0
    r = run_cli("evaluate", run_dir, "--cache", tmp_path / "ext.h5", "--keep-overlap")
    assert r.exit_code == 0, r.output
    listed = pd.read_csv(run_dir / "eval-ext-overlap" / "overlap.csv", dtype=str,
                         keep_default_na=False).set_index("image_id")
    listed.index = [i.split("/")[1].split(".")[0] if i != seen[1] else i for i in listed.index]
    assert listed.loc["bytes", "reason"] == "same bytes" and listed.loc[seen[1], "reason"] == "same image id"
    for name, i in [("reencoded", seen[2]), ("half", seen[3]), ("double", seen[4]), ("flipped", seen[5]),
                    ("turned", seen[6])]:
        assert (listed.loc[name, "reason"], listed.loc[name, "matches"]) == ("similar picture", i), name
        assert int(listed.loc[name, "bits"]) <= NEAR_BITS
    saved = json.loads((run_dir / "eval-ext-overlap" / "metrics.json").read_text())["overlap"]
    assert saved["found_by"]["similar_picture"] == 7  # the five, the byte copy and the resized one; no other image
    assert saved["same_bytes"] == 1 and saved["same_id"] == 1 and saved["similar_picture"] == 5
