import csv
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from bottleneck.errors import InputError
from bottleneck.synthetic.demo_data import DEMO_CLASSES, HAM10000_COLUMNS, MARKER_NAME, make_demo_dataset

SMALL = dict(images_per_class=6, image_size=48)


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    """The default demo set, made once for the module: 160 images of 128 px."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "ham")


def read_rows(ds):
    with open(ds.metadata, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def jpeg_paths(ds):
    return {p.stem: p for p in ds.root.rglob("*.jpg")}


def all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ham10000_layout_mimics_the_real_dataset(ham):
    assert ham.root.is_dir() and ham.metadata == ham.root / "HAM10000_metadata.csv"
    assert b"\r\n" not in ham.metadata.read_bytes()
    header, *rows = read_rows(ham)
    assert header == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    assert tuple(header) == HAM10000_COLUMNS
    assert len(rows) == ham.n_images == sum(ham.class_counts.values())
    ids = [r[1] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(r[0].startswith("HAM_") and len(r[0]) == 11 and r[1].startswith("ISIC_") for r in rows)
    assert {r[3] for r in rows} <= {"histo", "follow_up", "consensus", "confocal"}
    assert all(5 <= float(r[4]) <= 85 and r[5] in ("male", "female") and r[6] for r in rows)
    assert {r[7] for r in rows} == {"site_a", "site_b"}  # two sites, for subgroup reports
    by_lesion = defaultdict(set)
    for r in rows:
        by_lesion[r[0]].add(r[7])
    assert all(len(sites) == 1 for sites in by_lesion.values())  # a lesion is photographed at one site

    parts = {p.name for p in ham.root.iterdir() if p.is_dir()}
    assert parts == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    for image_id in ids:
        assert sum((ham.root / part / f"{image_id}.jpg").is_file() for part in parts) == 1, image_id
    assert len(list(ham.root.rglob("*.jpg"))) == ham.n_images  # no image without a row


def test_lesions_have_one_to_three_photos_of_one_class(ham):
    _, *rows = read_rows(ham)
    by_lesion = defaultdict(list)
    for lesion_id, image_id, dx, *_ in rows:
        by_lesion[lesion_id].append((image_id, dx))
    assert len(by_lesion) == ham.n_lesions < ham.n_images
    sizes = Counter(len(v) for v in by_lesion.values())
    assert set(sizes) <= {1, 2, 3} and sizes[1] and sum(n for k, n in sizes.items() if k > 1)
    for photos in by_lesion.values():
        assert len({dx for _, dx in photos}) == 1


def test_photos_of_one_lesion_are_alike_but_not_identical(ham):
    _, *rows = read_rows(ham)
    paths = jpeg_paths(ham)
    by_lesion = defaultdict(list)
    for lesion_id, image_id, *_ in rows:
        by_lesion[lesion_id].append(paths[image_id])
    load = lambda p: np.asarray(Image.open(p), np.float32)  # noqa: E731
    same = []
    for a, b in (v[:2] for v in by_lesion.values() if len(v) > 1):
        assert a.read_bytes() != b.read_bytes()
        same.append(np.abs(load(a) - load(b)).mean())
    firsts = [v[0] for v in by_lesion.values()]
    other = [np.abs(load(a) - load(b)).mean() for a, b in zip(firsts[:-1], firsts[1:])]
    # Re-photographed (a small turn, shift and exposure change): never the same pixels, yet far closer
    # to each other than photos of two different lesions.
    assert min(same) > 0
    assert np.mean(same) < 0.6 * np.mean(other)


def test_class_counts_follow_ham10000_imbalance(ham):
    _, *rows = read_rows(ham)
    assert tuple(ham.class_counts) == DEMO_CLASSES == ("bcc", "mel", "nv")
    assert ham.class_counts == {"bcc": 40, "mel": 40, "nv": 80}
    assert dict(Counter(r[2] for r in rows)) == ham.class_counts


def test_images_are_real_jpegs_of_the_asked_size(ham, tmp_path):
    for path in list(ham.root.rglob("*.jpg"))[:10]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (128, 128)
    ds = make_demo_dataset(tmp_path / "f", layout="folders", **SMALL)
    for path in ds.root.rglob("*.jpg"):
        with Image.open(path) as im:
            im.load()
            assert im.format == "JPEG" and im.size == (48, 48)


def test_folder_layout_has_one_folder_per_class_and_one_photo_per_lesion(tmp_path):
    ds = make_demo_dataset(tmp_path / "f", layout="folders", **SMALL)
    assert ds.metadata is None and ds.root == (tmp_path / "f").resolve()
    assert sorted(p.name for p in ds.root.iterdir() if p.is_dir()) == list(DEMO_CLASSES)
    counts = {c: len(list((ds.root / c).glob("ISIC_*.jpg"))) for c in DEMO_CLASSES}
    assert counts == ds.class_counts == {"bcc": 6, "mel": 6, "nv": 12}
    # Class folders cannot say which photos share a lesion, so each lesion gets one photo (no split leak).
    assert ds.n_lesions == ds.n_images == 24
    from bottleneck.images.index import build_index

    idx = build_index(ds.root)
    assert idx.source == "folders" and idx.class_names == DEMO_CLASSES and len(idx.entries) == 24


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = all_files(make_demo_dataset(tmp_path / "a", seed=7, **SMALL).root)
    b = all_files(make_demo_dataset(tmp_path / "b", seed=7, **SMALL).root)
    c = all_files(make_demo_dataset(tmp_path / "c", seed=8, **SMALL).root)
    assert a == b
    assert a != c
    jpegs = {v for k, v in a.items() if k.endswith(".jpg")}
    assert not jpegs & {v for k, v in c.items() if k.endswith(".jpg")}


def test_classes_differ_measurably(ham):
    _, *rows = read_rows(ham)
    paths = jpeg_paths(ham)
    stats = defaultdict(list)
    for _, image_id, dx, *_ in rows:
        rgb = np.asarray(Image.open(paths[image_id]), np.float32)
        centre = rgb[32:96, 32:96]  # the lesion sits near the middle
        lum = centre.mean(axis=2)
        stats[dx].append(((lum < 80).mean(), centre[..., 0].mean() - centre[..., 2].mean(), lum.mean()))
    dark, red_minus_blue, brightness = (dict((c, np.mean([s[i] for s in v])) for c, v in stats.items())
                                        for i in range(3))
    assert dark["mel"] > dark["nv"] + 0.1  # melanoma has black and dark-brown patches
    assert brightness["bcc"] > brightness["nv"] + 20  # bcc is pale pink, the nevus medium brown
    assert red_minus_blue["nv"] > red_minus_blue["bcc"]  # brown has less blue than pink


def test_complete_dataset_is_reused_not_redrawn(tmp_path):
    first = make_demo_dataset(tmp_path / "d", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in first.root.rglob("*.jpg")}
    again = make_demo_dataset(tmp_path / "d", **SMALL)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*.jpg")} == before
    marker = json.loads((first.root / MARKER_NAME).read_text())
    assert marker["params"]["seed"] == 0 and len(marker["files"]) == first.n_images


def test_demo_of_other_parameters_or_incomplete_is_refused(tmp_path):
    ds = make_demo_dataset(tmp_path / "d", **SMALL)
    with pytest.raises(InputError, match="seed=0.*not.*seed=1.*empty or new folder"):
        make_demo_dataset(tmp_path / "d", images_per_class=6, image_size=48, seed=1)
    next(ds.root.rglob("*.jpg")).unlink()
    with pytest.raises(InputError, match="incomplete"):
        make_demo_dataset(tmp_path / "d", **SMALL)


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"mine.*not empty.*pass an empty or new folder"):
        make_demo_dataset(tmp_path / "mine", **SMALL)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.txt"]


def test_empty_existing_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    ds = make_demo_dataset(tmp_path / "empty", **SMALL)
    assert ds.n_images == 24


@pytest.mark.parametrize("kwargs, match", [
    (dict(layout="isic2019"), r"'ham10000', 'folders'.*layout='isic2019'"),
    (dict(images_per_class=0), r"images_per_class=0"),
    (dict(image_size=8), r"image_size=8"),
    (dict(image_size=True), r"image_size=True"),
    (dict(seed=-1), r"seed=-1"),
])
def test_bad_arguments_name_the_value(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        make_demo_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_demo_set_indexes_as_ham10000(ham):
    from bottleneck.images.index import build_index

    idx = build_index(ham.root)
    assert idx.source == "ham10000" and idx.metadata == ham.metadata
    assert len(idx.entries) == ham.n_images and not idx.rows_without_image and not idx.images_without_row
    assert idx.class_names == DEMO_CLASSES
    assert len({e.group for e in idx.entries}) == ham.n_lesions
    assert idx.meta_columns == ("dx_type", "age", "sex", "localization", "dataset")  # subgroups for reports
