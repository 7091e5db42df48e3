import pytest

from bottleneck.dataset import build_index, select_shard
from bottleneck.errors import InputError
from conftest import make_ham, write_image


def test_class_folders_keep_names_as_they_are(class_tree):
    idx = build_index(class_tree)
    assert idx.source == "folders"
    assert idx.class_names == ("bcc", "mel", "nevus benign")
    assert len(idx.entries) == 12
    e = [e for e in idx.entries if e.label == "nevus benign"][0]
    assert e.rel_path.startswith("nevus benign/") and e.path.is_file() and e.group == ""


def test_ham10000_detected_from_columns_with_crlf_and_bom(tmp_path):
    root = make_ham(tmp_path / "HAM", crlf=True, bom=True)
    idx = build_index(root)  # the top-level metadata CSV is found without --metadata
    assert idx.source == "ham10000"
    assert idx.metadata.name == "HAM10000_metadata.csv"
    assert len(idx.entries) == 12
    assert idx.class_names == ("bkl", "mel", "nv")
    e = idx.entries[1]
    assert (e.image_id, e.group, e.label) == ("ISIC_0000001", "HAM_0000000", "mel")
    assert e.rel_path == "HAM10000_images_part_2/ISIC_0000001.jpg"


def test_rows_without_image_and_images_without_row_are_counted_not_fatal(tmp_path):
    root = make_ham(tmp_path / "HAM", extra_rows=["HAM_0009999,ISIC_9999999,nv,histo,40,female,face"],
                    extra_images=["ISIC_5555555.jpg"])
    idx = build_index(root)
    assert idx.rows_without_image == ("ISIC_9999999",)
    assert idx.images_without_row == ("HAM10000_images_part_1/ISIC_5555555.jpg",)
    assert len(idx.entries) == 12


def test_isic2019_one_hot_ground_truth(tmp_path):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"ISIC_{i}.jpg", seed=i)
    csv = tmp_path / "gt.csv"
    csv.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
                   "ISIC_0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
                   "ISIC_1,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
                   "ISIC_2,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    idx = build_index(tmp_path / "imgs", csv)
    assert idx.source == "isic2019"
    assert [e.label for e in idx.entries] == ["MEL", "BCC", "NV"]


def test_isic2020_groups_by_patient(tmp_path):
    for i in range(2):
        write_image(tmp_path / "train" / f"ISIC_{i}.jpg", seed=i)
    csv = tmp_path / "train.csv"
    csv.write_text("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
                   "benign_malignant,target\nISIC_0,IP_1,male,45,torso,nevus,benign,0\n"
                   "ISIC_1,IP_1,male,45,torso,melanoma,malignant,1\n")
    idx = build_index(tmp_path / "train", csv)
    assert idx.source == "isic2020"
    assert [(e.label, e.group) for e in idx.entries] == [("benign", "IP_1"), ("malignant", "IP_1")]


def test_generic_csv_with_named_columns(tmp_path):
    write_image(tmp_path / "img" / "sub" / "a.png", seed=1)
    write_image(tmp_path / "img" / "b.jpg", seed=2)
    csv = tmp_path / "meta.csv"
    csv.write_text("file,diagnosis,patient\nsub/a.png,melanoma,p1\nb,nevus,p2\n")
    idx = build_index(tmp_path / "img", csv, id_column="file", label_column="diagnosis", group_column="patient")
    assert [(e.rel_path, e.label, e.group) for e in idx.entries] == [("sub/a.png", "melanoma", "p1"),
                                                                      ("b.jpg", "nevus", "p2")]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("no_images", "no images found"),
    ("missing_column", "has no column 'diagnosis'"),
    ("duplicate", "duplicate image id 'ISIC_0000000'"),
    ("escape", "points outside the image folder"),
    ("unknown_csv", "pass --id-column"),
])
def test_bad_input_names_the_problem(tmp_path, case, message):
    root = tmp_path / "d"
    kwargs = {}
    if case == "empty":
        root.mkdir()
    elif case == "no_images":
        (root / "mel").mkdir(parents=True)
        (root / "mel" / "notes.txt").write_text("not an image")
    elif case in ("missing_column", "duplicate", "escape", "unknown_csv"):
        make_ham(root, n_lesions=2, images_per_lesion=1)
        csv = root / "HAM10000_metadata.csv"
        if case == "missing_column":
            kwargs = dict(metadata=csv, label_column="diagnosis")
        elif case == "duplicate":
            csv.write_text(csv.read_text() + "HAM_0000000,ISIC_0000000,mel,histo,50,male,back\n")
        elif case == "escape":
            csv.write_text(csv.read_text() + "HAM_0000009,../../etc/passwd,mel,histo,50,male,back\n")
        elif case == "unknown_csv":
            other = tmp_path / "other.csv"
            other.write_text("a,b\n1,2\n")
            kwargs = dict(metadata=other)
    with pytest.raises(InputError, match=message):
        build_index(root, **kwargs)


def test_ambiguous_stem_is_an_error(tmp_path):
    write_image(tmp_path / "img" / "p1" / "x.jpg", seed=1)
    write_image(tmp_path / "img" / "p2" / "x.jpg", seed=2)
    csv = tmp_path / "m.csv"
    csv.write_text("id,label\nx,mel\n")
    with pytest.raises(InputError, match="matches 2 files"):
        build_index(tmp_path / "img", csv, id_column="id", label_column="label")


def test_shards_partition_the_index(class_tree):
    idx = build_index(class_tree)
    parts = [select_shard(idx, f"{i}/3") for i in range(3)]
    ids = [e.image_id for p in parts for e in p.entries]
    assert sorted(ids) == sorted(e.image_id for e in idx.entries)
    assert [e.image_id for e in select_shard(idx, "1/3").entries] == [e.image_id for e in parts[1].entries]
    with pytest.raises(InputError, match="--shard"):
        select_shard(idx, "3/3")
