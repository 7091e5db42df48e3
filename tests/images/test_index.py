import re

import pytest
from conftest import hostile_tree, make_ham, write_image

from bottleneck.errors import InputError
from bottleneck.images.index import build_index, select_shard


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
    assert [e.label for e in idx.entries] == ["mel", "bcc", "nv"]  # as HAM10000 writes its classes


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


@pytest.fixture
def linked_classes(tmp_path):
    return hostile_tree(tmp_path)


def test_class_folders_index_each_real_image_once_and_list_the_links_skipped(linked_classes):
    idx = build_index(linked_classes)
    assert [(e.image_id, e.label) for e in idx.entries] == [(f"{c}/x{i}.jpg", c) for c in "ab" for i in range(3)]
    assert all(e.path == linked_classes / e.rel_path for e in idx.entries)
    assert dict(idx.skipped_paths) == {
        "a/alias": "symlink to a folder already indexed as b",
        "a/loop": "symlink loop (it leads back into a folder above it)",
        "a/out.jpg": "symlink leaves the image folder (pass --follow-symlinks to follow it)",
        "b/ext": "symlink leaves the image folder (pass --follow-symlinks to follow it)"}

    follow = build_index(linked_classes, follow_symlinks=True)
    assert [(e.image_id, e.label) for e in follow.entries if e not in idx.entries] == [("a/out.jpg", "a"),
                                                                                        ("b/ext/o.jpg", "b")]
    assert len(follow.entries) == 8 and dict(follow.skipped_paths).keys() == {"a/alias", "a/loop"}


def test_a_class_folder_that_is_a_link_follows_the_same_rule(tmp_path):
    write_image(tmp_path / "elsewhere" / "m.jpg", seed=1)
    write_image(tmp_path / "data" / "b" / "x.jpg", seed=2)
    (tmp_path / "data" / "mel").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "data" / "alias").symlink_to("b")
    idx = build_index(tmp_path / "data")
    assert [e.image_id for e in idx.entries] == ["b/x.jpg"] and idx.class_names == ("b",)
    assert [e.image_id for e in build_index(tmp_path / "data", follow_symlinks=True).entries] == ["b/x.jpg",
                                                                                                 "mel/m.jpg"]
    (tmp_path / "data" / "b" / "x.jpg").unlink()
    with pytest.raises(InputError, match=r"no images found .*\(2 skipped, e\.g\. alias: symlink to a folder"):
        build_index(tmp_path / "data")


def csv_index(root, csv_path, text, **kw):
    csv_path.write_text(text)
    return build_index(root, csv_path, id_column="id", label_column="label", **kw)


def test_csv_ids_obey_the_symlink_rule_bare_or_with_folders(linked_classes, tmp_path):
    csv = tmp_path / "m.csv"
    # a bare id only finds what the walk indexed: o.jpg lies behind b/ext, a link out of the root
    idx = csv_index(linked_classes, csv, "id,label\na/x0,mel\no.jpg,nv\n")
    assert [e.rel_path for e in idx.entries] == ["a/x0.jpg"]
    assert idx.rows_without_image == ("o.jpg",) and "b/ext" in dict(idx.skipped_paths)
    with pytest.raises(InputError, match=r"image id 'b/ext/o.jpg' in .*m\.csv leads through a symlink to .*"
                                         r"outside the image folder .*; pass --follow-symlinks"):
        csv_index(linked_classes, csv, "id,label\nb/ext/o.jpg,nv\n")
    with pytest.raises(InputError, match="'b/ext/o' in .* leads through a symlink"):  # a stem in a linked folder
        csv_index(linked_classes, csv, "id,label\na/x0,mel\nb/ext/o,nv\n")
    # a stem whose file is itself a link out of the root: like a bare id, only what the walk indexed is found
    assert csv_index(linked_classes, csv, "id,label\na/x0,mel\na/out,nv\n").rows_without_image == ("a/out",)
    follow = csv_index(linked_classes, csv, "id,label\nb/ext/o.jpg,nv\na/out.jpg,mel\n", follow_symlinks=True)
    assert [(e.image_id, e.rel_path) for e in follow.entries] == [("b/ext/o.jpg", "b/ext/o.jpg"),
                                                                  ("a/out.jpg", "a/out.jpg")]
    assert follow.entries[0].path.resolve() == (tmp_path / "ext" / "o.jpg")


def test_csv_ids_through_links_inside_the_root_find_the_one_indexed_file(linked_classes, tmp_path):
    csv = tmp_path / "m.csv"
    idx = csv_index(linked_classes, csv, "id,label\na/alias/x1.jpg,nv\na/loop/a/x2,mel\n")
    assert [(e.image_id, e.rel_path) for e in idx.entries] == [("a/alias/x1.jpg", "b/x1.jpg"),
                                                               ("a/loop/a/x2", "a/x2.jpg")]
    assert "b/x0.jpg" in idx.images_without_row and "b/x1.jpg" not in idx.images_without_row
    with pytest.raises(InputError, match=r"image ids 'b/x1.jpg' and 'a/alias/x1' in .*m\.csv name the same file "
                                         r"b/x1.jpg; each row must name a different image"):
        csv_index(linked_classes, csv, "id,label\nb/x1.jpg,nv\na/alias/x1,mel\n")


@pytest.mark.parametrize("column, value, code", [
    ("localization", "ba\x00ck", "U+0000"),  # metadata: a NUL would reach the cache, whose strings end at one
    ("localization", "ba\x1bck", "U+001B"),  # an escape sequence in a report or a log
    ("dx", "m\tel", "U+0009"),  # a label: no control character at all
    ("lesion_id", "HAM\x7f1", "U+007F"),  # a group
])
def test_control_characters_in_a_csv_are_refused_naming_row_and_column(tmp_path, column, value, code):
    root = tmp_path / "d"
    make_ham(root, n_lesions=2, images_per_lesion=1)
    csv = root / "HAM10000_metadata.csv"
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[2].split(",")
    row[header.index(column)] = value
    csv.write_text("\n".join([*lines[:2], ",".join(row), *lines[3:]]) + "\n")
    message = f"{csv} row 3 column '{column}' holds the control character {code}"
    with pytest.raises(InputError, match=re.escape(message)):
        build_index(root)


def test_tabs_and_line_breaks_in_free_text_metadata_are_kept(tmp_path):
    root = tmp_path / "d"
    make_ham(root, n_lesions=2, images_per_lesion=1)
    csv = root / "HAM10000_metadata.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",notes", lines[1] + ',"two\nlines\tand a tab"',
                              *[line + "," for line in lines[2:]]]) + "\n")
    idx = build_index(root)
    assert dict(idx.entries[0].meta)["notes"] == "two\nlines\tand a tab"
