"""Metadata CSVs as published (issue 29): PH2's CSV with only --label-column, ISIC 2019's labels and age/sex/site in
two CSVs joined on the image id, ISIC 2020's columns that repeat the label left out of the metadata. Real JPEGs,
real CSVs, the real CLI (vgg16 at 32 px, weights none) and the cache opened through the library."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import TINY_ARGS, run_cli, write_image

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.images.index import build_index

ONE_HOT = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
GT = "ISIC_2019_Training_GroundTruth.csv"
META = "ISIC_2019_Training_Metadata.csv"
SITES = ("head/neck", "torso", "lower extremity")


def isic2019_row(k: int) -> dict[str, str]:
    """Image k of the ISIC 2019 layout: its class, and its metadata (no lesion id for the last two, as in the
    published file; site and sex not a function of the class)."""
    return {"class": ("MEL", "NV", "BCC")[k % 3], "age_approx": str(30 + 5 * k), "sex": ("male", "female")[k % 2],
            "anatom_site_general": SITES[k % 4 % 3], "lesion_id": f"BCN_{k // 2:07d}" if k < 4 else ""}


@pytest.fixture(scope="module")
def isic2019(tmp_path_factory):
    """ISIC_2019_Training_Input/ with 6 JPEGs, the ground truth (one-hot) and the metadata CSV beside it, extracted
    once through the CLI with both CSVs (--metadata repeated; the metadata file first, the labels' second)."""
    root = tmp_path_factory.mktemp("isic2019")
    rows = [isic2019_row(k) for k in range(6)]
    for k in range(6):
        write_image(root / "ISIC_2019_Training_Input" / f"ISIC_{k:07d}.jpg", seed=300 + k)
    (root / GT).write_text("image," + ",".join(ONE_HOT) + "\n" + "".join(
        f"ISIC_{k:07d}," + ",".join("1.0" if c == r["class"] else "0.0" for c in ONE_HOT) + "\n"
        for k, r in enumerate(rows)))
    (root / META).write_text("image,age_approx,anatom_site_general,lesion_id,sex\n" + "".join(
        f"ISIC_{k:07d},{r['age_approx']},{r['anatom_site_general']},{r['lesion_id']},{r['sex']}\n"
        for k, r in enumerate(rows)))
    cache = root / "c.h5"
    r = run_cli("extract", root / "ISIC_2019_Training_Input", "--metadata", root / META, "--metadata", root / GT,
                *TINY_ARGS, "--cache", cache)
    assert r.exit_code == 0, r.output
    return root


def test_isic2019_two_csvs_store_labels_groups_age_sex_and_site(isic2019):
    data = load_cache(isic2019 / "c.h5")
    ids = [str(i) for i in data.image_ids]
    expected = {f"ISIC_{k:07d}": isic2019_row(k) for k in range(6)}
    assert list(data.class_names) == ["bcc", "mel", "nv"]  # MEL -> mel, as HAM10000 names its classes
    assert [data.class_names[y] for y in data.labels] == [expected[i]["class"].lower() for i in ids]
    assert list(data.groups) == [expected[i]["lesion_id"] for i in ids]  # lesion_id is the group where present
    assert sorted(data.meta) == ["age_approx", "anatom_site_general", "sex"]  # not image, lesion_id nor MEL...
    for column in data.meta:
        assert list(data.meta[column]) == [expected[i][column] for i in ids]


def test_isic2019_layout_is_found_by_file_names_or_given_with_commas(isic2019):
    found = build_index(isic2019)  # both published files, without --metadata
    given = build_index(isic2019, f"{isic2019 / GT},{isic2019 / META}")
    for idx in (found, given):
        assert idx.source == "isic2019" and idx.metadata.name == GT and [p.name for p in idx.metadata_extra] == [META]
        assert idx.meta_columns == ("age_approx", "anatom_site_general", "sex")
        assert [e.label for e in idx.entries] == ["mel", "nv", "bcc", "mel", "nv", "bcc"]
    alone = build_index(isic2019, isic2019 / GT)  # the labels alone: no metadata, and a note naming the other file
    assert alone.meta_columns == () and any(META in note for note in alone.notes)


def test_adding_the_metadata_csv_later_is_a_rerun_of_the_same_dataset(isic2019, tmp_path):
    images = isic2019 / "ISIC_2019_Training_Input"
    cache = tmp_path / "gt.h5"
    r = run_cli("extract", images, "--metadata", isic2019 / GT, *TINY_ARGS, "--cache", cache)
    assert r.exit_code == 0, r.output
    assert load_cache(cache).meta == {} and set(load_cache(cache).groups) == {""}
    r = run_cli("extract", images, "--metadata", isic2019 / GT, "--metadata", isic2019 / META, *TINY_ARGS,
                "--cache", cache)
    assert r.exit_code == 0, r.output  # not refused as another dataset: the labels' CSV is the same
    data = load_cache(cache)
    ids = [str(i) for i in data.image_ids]
    assert list(data.meta["sex"]) == [isic2019_row(int(i[5:]))["sex"] for i in ids]
    assert list(data.groups) == [isic2019_row(int(i[5:]))["lesion_id"] for i in ids]


@pytest.mark.parametrize("hot, message", [
    (("MEL", "NV"), r"image 'ISIC_0000001' has 1 in MEL and NV; give each row exactly one class"),
    ((), r"image 'ISIC_0000001' has no 1 in MEL, NV, BCC, .*; give each row exactly one class"),
])
def test_a_one_hot_row_without_exactly_one_class_is_refused_naming_file_and_image(isic2019, tmp_path, hot, message):
    lines = (isic2019 / GT).read_text().splitlines()
    lines[2] = "ISIC_0000001," + ",".join("1.0" if c in hot else "0.0" for c in ONE_HOT)
    gt = tmp_path / GT
    gt.write_text("\n".join(lines) + "\n")
    r = run_cli("extract", isic2019 / "ISIC_2019_Training_Input", "--metadata", gt, *TINY_ARGS,
                "--cache", tmp_path / "c.h5")
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert str(gt) in r.output and re.search(message, r.output)
    assert not (tmp_path / "c.h5").exists()


def test_csvs_that_disagree_on_a_shared_column_are_refused(isic2019, tmp_path):
    other = tmp_path / "extra.csv"
    other.write_text("image,sex,phototype\nISIC_0000000,female,II\n")  # image 0 is male in the metadata CSV
    with pytest.raises(InputError, match=r"column 'sex' says 'male' in .*Metadata\.csv but 'female' in .*extra\.csv "
                                         r"for image 'ISIC_0000000'"):
        build_index(isic2019, [isic2019 / GT, isic2019 / META, other])


# --- PH2: an image_id column and --label-column only ------------------------------------------------------------

def test_ph2_csv_works_with_label_column_alone(tmp_path):
    root = tmp_path / "ph2"
    for k in range(4):
        write_image(root / "images" / f"IMD{k:03d}.bmp", seed=400 + k, fmt="BMP")
    csv = root / "PH2_labels.csv"
    diagnoses = ("common_nevus", "atypical_nevus", "melanoma", "common_nevus")
    csv.write_text("image_id,clinical_diagnosis,asymmetry\n"
                   + "".join(f"IMD{k:03d},{d},{k % 2}\n" for k, d in enumerate(diagnoses)))
    r = run_cli("extract", root / "images", "--metadata", csv, "--label-column", "clinical_diagnosis", *TINY_ARGS,
                "--cache", tmp_path / "ph2.h5")
    assert r.exit_code == 0, r.output
    data = load_cache(tmp_path / "ph2.h5")
    assert dict(zip(map(str, data.image_ids), (data.class_names[y] for y in data.labels))) == {
        f"IMD{k:03d}": d for k, d in enumerate(diagnoses)}
    assert list(data.meta) == ["asymmetry"]


def test_the_first_obvious_id_column_is_used_and_named_and_id_column_overrides(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / "img" / f"{name}.jpg", seed=ord(name))
    csv = tmp_path / "m.csv"
    csv.write_text("Filename,Image_ID,dx\nlabel one,a,mel\nlabel two,b,nv\n")  # any case; image_id before filename
    idx = build_index(tmp_path / "img", csv, label_column="dx")
    assert [e.image_id for e in idx.entries] == ["a", "b"]
    assert any("'Image_ID'" in note and "Filename" in note for note in idx.notes)
    csv.write_text("Filename,Image_ID,dx\na,x,mel\nb,y,nv\n")
    assert [e.image_id for e in build_index(tmp_path / "img", csv, "Filename", "dx").entries] == ["a", "b"]


# --- ISIC 2020: columns that determine the label ------------------------------------------------------------------

ISIC2020 = ("image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
            "benign_malignant,target")
DIAGNOSES = (("nevus", "benign", "0"), ("melanoma", "malignant", "1"), ("unknown", "benign", "0"))


@pytest.fixture(scope="module")
def isic2020(tmp_path_factory):
    """train/ with 6 JPEGs and ISIC_2020_Training_GroundTruth.csv, extracted once with the default --meta-columns."""
    root = tmp_path_factory.mktemp("isic2020")
    lines = [ISIC2020]
    for k in range(6):
        write_image(root / "train" / f"ISIC_{k:07d}.jpg", seed=500 + k)
        lines.append(f"ISIC_{k:07d},IP_{k // 3},IL_{k // 2},{('male', 'female')[k % 2]},{45 + 5 * (k % 2)},torso,"
                     + ",".join(DIAGNOSES[k % 3]))
    (root / "ISIC_2020_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    r = run_cli("extract", root / "train", "--metadata", root / "ISIC_2020_Training_GroundTruth.csv", *TINY_ARGS,
                "--cache", root / "c.h5")
    assert r.exit_code == 0, r.output
    assert "note: left out of metadata: diagnosis, target (they determine the label" in r.output
    return root


def test_isic2020_label_repeating_columns_are_not_metadata_by_default(isic2020):
    data = load_cache(isic2020 / "c.h5")
    assert list(data.meta) == ["lesion_id", "sex", "age_approx", "anatom_site_general_challenge"]
    assert set(data.groups) == {"IP_0", "IP_1"}  # patients are the groups; lesion ids stay metadata
    assert list(data.class_names) == ["benign", "malignant"]


def test_isic2020_label_repeating_columns_are_kept_when_named(isic2020, tmp_path):
    cache = shutil.copy(isic2020 / "c.h5", tmp_path / "c.h5")
    r = run_cli("extract", isic2020 / "train", "--metadata", isic2020 / "ISIC_2020_Training_GroundTruth.csv",
                *TINY_ARGS, "--cache", cache, "--meta-columns", "sex,diagnosis,target")
    assert r.exit_code == 0, r.output
    data = load_cache(cache)
    ids = [int(str(i)[5:]) for i in data.image_ids]
    assert list(data.meta["diagnosis"]) == [DIAGNOSES[k % 3][0] for k in ids]
    assert list(data.meta["target"]) == [DIAGNOSES[k % 3][2] for k in ids]


def test_a_column_that_maps_each_value_to_one_label_is_left_out(tmp_path):
    """From the data alone, in any CSV: `histology` names the class in other words (left out); `site` has a value
    seen with two classes and `code` is unique per row (both kept)."""
    for k in range(6):
        write_image(tmp_path / "img" / f"i{k}.jpg", seed=600 + k)
    csv = tmp_path / "m.csv"
    csv.write_text("filename,label,histology,site,code\n" + "".join(
        f"i{k},{('mel', 'nv')[k % 2]},{('malignant', 'benign')[k % 2]},{('back', 'face', 'back')[k % 3]},c{k}\n"
        for k in range(6)))
    idx = build_index(tmp_path / "img", csv, label_column="label")
    assert idx.meta_columns == ("site", "code")
    assert any(note.startswith("left out of metadata: histology") for note in idx.notes)
    assert build_index(tmp_path / "img", csv, label_column="label", meta_columns="histology").meta_columns == (
        "histology",)
