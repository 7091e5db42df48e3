"""The journal's record format: framed records round-trip every array a batch holds, byte for byte; a flipped byte,
a cut-off record or a foreign header is caught, and `scan` stops at a record cut off at the end of a file."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bottleneck.cache.frames import FRAME, DamagedRecord, pack, read_record, scan, unpack, write_all


def _arrays() -> dict:
    return {"image_id": np.array(["a", "caf\udce9", ""]),  # a name that is not UTF-8, as POSIX decodes one
            "view_lo": np.array(2),  # 0-d stays 0-d
            "views": np.zeros((3, 0, 4), np.float16),  # no bytes at all
            "features": np.arange(24, dtype=np.float16).reshape(3, 8)[:, ::2],  # not contiguous
            "failed": np.zeros((0, 3), str), "has": np.array([True, False, True]),
            "phash": np.array([1, 2**64 - 1, 0], np.uint64)}


def _bytes(arrays: dict) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in pack(arrays))


def test_a_record_round_trips_every_array():
    a = _arrays()
    got = unpack(_bytes(a))
    assert list(got) == list(a)
    for k in a:
        assert got[k].dtype == a[k].dtype and got[k].shape == a[k].shape and np.array_equal(got[k], a[k]), k


@pytest.mark.parametrize("damage, why", [
    (lambda d: d[:-1], "where its header says"),
    (lambda d: d[:FRAME.size - 1], "cut off"),
    (lambda d: b"PK\x03\x04" + d[4:], "no batch header"),
    (lambda d: d[:-2] + bytes([d[-2] ^ 1]) + d[-1:], "CRC does not match")])
def test_a_damaged_record_is_named_as_such(damage, why):
    with pytest.raises(DamagedRecord, match=why):
        unpack(damage(_bytes(_arrays())))


def test_scan_finds_whole_records_and_stops_at_one_cut_off(tmp_path):
    path = tmp_path / "seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    sizes = [write_all(fd, pack({"x": np.full(n, n, np.int32)})) for n in (1, 1000, 7)]
    os.close(fd)
    records, end = scan(path)
    assert [s for _, s in records] == sizes and end == sum(sizes) == path.stat().st_size
    assert [read_record(path, off, size)["x"].tolist()[:1] for off, size in records] == [[1], [1000], [7]]
    os.truncate(path, sum(sizes) - 3)  # the last record cut off mid-write
    assert scan(path) == (records[:2], sizes[0] + sizes[1])
    with open(path, "r+b") as fh:  # a header that is not a record's: the rest is one damaged record
        fh.seek(sizes[0])
        fh.write(b"XXXX")
    records, end = scan(path)
    assert len(records) == 2 and end == path.stat().st_size
    with pytest.raises(DamagedRecord, match="no batch header"):
        read_record(path, *records[1])


def test_small_arrays_are_written_joined_and_large_ones_as_views_in_the_same_order():
    """A batch's many small arrays around its features are written as a few parts (each small array a part of its
    own made writes slow); the record's bytes are those of the arrays one after the other, whatever the parts."""
    big = np.arange(40_000, dtype=np.float16).reshape(20, 2000)  # 80,000 bytes: a part of its own
    a = {"image_id": np.array(["x", "yz"]), "size": np.array([[1, 2], [3, 4]], np.int32), "features": big,
         "failed": np.array([["p", "r", "s"]]), "views": np.zeros((2, 0, 2000), np.float16), "view_lo": np.array(0)}
    parts = pack(a)
    assert len(parts) == 3 and parts[1].nbytes == big.nbytes and np.shares_memory(parts[1], big)
    got = unpack(b"".join(bytes(memoryview(p).cast("B")) for p in parts))
    assert all(np.array_equal(got[k], a[k]) and got[k].dtype == a[k].dtype for k in a)
    expected_payload = b"".join(v.tobytes() for v in a.values())
    assert b"".join(bytes(memoryview(p).cast("B")) for p in parts).endswith(expected_payload)


@pytest.mark.parametrize("names", [("image_id", "meta"), ('a"b', "c\\d", "é")])
def test_the_header_is_the_json_of_names_dtypes_and_shapes(names):
    """Plain names are written out directly (faster than json.dumps), others through json; both read back the same."""
    a = {names[0]: np.zeros((2, 3), np.float16), names[1]: np.array(["ab", "c"])}
    if len(names) > 2:
        a[names[2]] = np.array(7)
    got = unpack(_bytes(a))
    assert list(got) == list(a) and all(got[k].shape == a[k].shape and got[k].dtype == a[k].dtype for k in a)
