"""The check for the pandas accelerator that shares our import name: its files, as its wheel lays them out, written
into a tmp site-packages beside a copy of our package folder."""

import shutil
import time
from pathlib import Path

import pytest

from bottleneck.util import clash_warning, find_clash, package_dirs

PACKAGE = Path(__file__).resolve().parents[2] / "bottleneck"

# The accelerator's wheel (Bottleneck 1.6.1, cp311 manylinux): what it adds to `bottleneck/`, and its metadata.
WHEEL_FILES = ["__init__.py", "_pytesttester.py", "_version.py", "conftest.py",
               "move.cpython-311-x86_64-linux-gnu.so", "nonreduce.cpython-311-x86_64-linux-gnu.so",
               "nonreduce_axis.cpython-311-x86_64-linux-gnu.so", "reduce.cpython-311-x86_64-linux-gnu.so"]
ACCELERATOR_METADATA = "Metadata-Version: 2.4\nName: Bottleneck\nVersion: 1.6.1\n" \
                       "Summary: Fast NumPy array functions written in C\n"
OUR_OLD_METADATA = "Metadata-Version: 2.1\nName: bottleneck\nVersion: 0.1.0\nSummary: Fast, honest transfer " \
                   "learning on medical images: extract CNN bottlenecks once, train heads in seconds.\n"


@pytest.fixture
def site(tmp_path):
    """A site-packages holding our package as pip installs it (the sources, no metadata of the accelerator)."""
    shutil.copytree(PACKAGE, tmp_path / "bottleneck", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def dist_info(site: Path, name: str, metadata: str | None) -> None:
    (site / name).mkdir()
    if metadata is not None:
        (site / name / "METADATA").write_text(metadata)


def test_a_clean_install_has_no_clash(site):
    assert find_clash(site / "bottleneck") == [] and clash_warning(site / "bottleneck") is None
    assert package_dirs() == [PACKAGE] and find_clash() == []  # this very checkout, as the tests run it


def test_the_accelerator_installed_over_us_is_found_and_named_in_one_line(site):
    for name in WHEEL_FILES[1:]:  # its __init__.py would overwrite ours; it is not looked for
        (site / "bottleneck" / name).write_bytes(b"\x7fELF" if name.endswith(".so") else b"")
    dist_info(site, "bottleneck-1.6.1.dist-info", ACCELERATOR_METADATA)
    found = find_clash(site / "bottleneck")
    assert found == ["bottleneck/_pytesttester.py", "bottleneck/move.cpython-311-x86_64-linux-gnu.so",
                     "bottleneck/nonreduce.cpython-311-x86_64-linux-gnu.so",
                     "bottleneck/nonreduce_axis.cpython-311-x86_64-linux-gnu.so",
                     "bottleneck/reduce.cpython-311-x86_64-linux-gnu.so", "bottleneck-1.6.1.dist-info"]
    line = clash_warning(site / "bottleneck")
    assert "\n" not in line and "bottleneck/_pytesttester.py" in line and "and 3 more" in line
    assert str(site) in line and "separate virtualenv" in line and "pip uninstall Bottleneck" in line


@pytest.mark.parametrize("name", ["Bottleneck-1.3.7.dist-info", "bottleneck-1.6.1.dist-info",
                                  "Bottleneck-1.3.5-py3.11.egg-info"])
def test_its_metadata_folder_beside_us_is_found_in_either_case(site, name):
    dist_info(site, name, ACCELERATOR_METADATA)
    assert find_clash(site / "bottleneck") == [name]


def test_a_metadata_folder_without_metadata_counts_as_the_accelerators(site):
    dist_info(site, "Bottleneck-1.3.7.dist-info", None)
    assert find_clash(site / "bottleneck") == ["Bottleneck-1.3.7.dist-info"]


def test_our_own_metadata_from_before_the_rename_is_not_the_accelerator(site):
    dist_info(site, "bottleneck-0.1.0.dist-info", OUR_OLD_METADATA)
    dist_info(site, "bottleneck_derm-0.1.0.dist-info", OUR_OLD_METADATA.replace("bottleneck\n", "bottleneck-derm\n"))
    assert find_clash(site / "bottleneck") == []


def test_the_accelerators_folder_shadowing_an_editable_install_is_found(site, tmp_path_factory):
    """Editable: our modules load from the source tree, the top `bottleneck` from site-packages (its folder first on
    the path), so `package_dirs()` gives both folders and the warning names the one that is not ours."""
    theirs = tmp_path_factory.mktemp("site-packages")
    (theirs / "bottleneck").mkdir()
    for name in WHEEL_FILES:
        (theirs / "bottleneck" / name).write_bytes(b"")
    dist_info(theirs, "bottleneck-1.6.1.dist-info", ACCELERATOR_METADATA)
    assert find_clash([site / "bottleneck"]) == []
    found = find_clash([site / "bottleneck", theirs / "bottleneck"])
    assert len(found) == 6 and found[-1] == "bottleneck-1.6.1.dist-info"
    assert f"and 3 more, in {theirs}): " in clash_warning([site / "bottleneck", theirs / "bottleneck"])


def test_a_missing_folder_is_no_clash(tmp_path):
    assert find_clash(tmp_path / "nowhere" / "bottleneck") == []


def test_the_check_is_cheap_enough_for_every_command(site):
    """It runs before every command: a budget of a few milliseconds, on a site-packages of 500 entries."""
    for i in range(500):
        (site / f"package{i}-1.0.dist-info").mkdir()
    start = time.perf_counter()
    for _ in range(20):
        clash_warning(site / "bottleneck")
    assert (time.perf_counter() - start) / 20 < 0.005
