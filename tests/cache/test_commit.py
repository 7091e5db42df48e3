"""A commit's own work on the per-row fingerprint column (`phash`): created by the first batch that brings
fingerprints (NO_FINGERPRINT for the rows before), appended and refreshed like every row column, kept when a batch
has none for a row, and readable from caches without it or from batches journaled by versions before it. Real
caches through the library's writer, read back with h5py and load_cache."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import feature_cache

from bottleneck.cache.batch import DamagedBatch, check_batch
from bottleneck.cache.journal import Journal
from bottleneck.cache.merge import merge_caches
from bottleneck.cache.store import describe_cache, load_cache
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import CacheError

COUNTS = {"bcc": 3, "mel": 2}


def row(image_id: str, **kw) -> dict:
    return dict(image_id=image_id, path=f"mel/{image_id}.jpg", label="mel", group="", sha256=f"{image_id:0>64}",
                width=4, height=3, **kw)


def write(path, rows, features=True):
    config = load_cache(path, features=False).config
    with CacheWriter(path, config) as w:
        w.write_batch(rows, np.ones((len(rows), config.num_features), np.float32) if features else None)


def test_feature_cache_stores_chosen_fingerprints(tmp_path):
    data = load_cache(feature_cache(tmp_path / "c.h5", counts=COUNTS, phash=lambda k, name, i: 1000 * k + i + 1))
    assert data.phash.dtype == np.uint64 and data.phash.tolist() == [1, 1002, 2003, 3001, 4002]
    assert load_cache(feature_cache(tmp_path / "d.h5", counts=COUNTS)).phash is None  # no column: an older cache


def test_the_first_fingerprints_create_the_column_and_later_rows_without_one_get_none(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts=COUNTS)
    write(cache, [row("a1", phash=2**64 - 2), row("a2")])  # the column arrives with a1
    data = load_cache(cache)
    assert data.phash.tolist() == [0] * 5 + [2**64 - 2, 0]
    write(cache, [row("img00001", has_features=False, phash=77), row("a1", has_features=False)])
    data = load_cache(cache)
    assert data.phash.tolist() == [0, 77, 0, 0, 0, 2**64 - 2, 0]  # refreshed; a1 kept (the batch had none)
    assert describe_cache(cache)["fingerprints"] == 2


def test_a_batch_of_a_version_before_fingerprints_still_commits(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts=COUNTS, phash=lambda k, name, i: k + 10)
    config = load_cache(cache, features=False).config
    journal = Journal(cache, config)
    batch = journal.write([row("old1")], np.zeros((1, config.num_features), np.float32))
    arrays = Journal.read(batch)
    check_batch(arrays, config.num_features, config.dtype)
    journal.close_segment()
    batch.path.unlink()  # the batch as an older version journaled it: one .npz, without fingerprints
    np.savez(journal.dir / "batch-00000001.npz", **{k: v for k, v in arrays.items() if k not in ("phash", "has_phash")})
    with CacheWriter(cache, config):  # commits what the journal holds
        pass
    assert load_cache(cache).phash.tolist() == [10, 11, 12, 13, 14, 0]
    arrays["phash"] = arrays["phash"].astype(np.float64)
    with pytest.raises(DamagedBatch, match="phash"):
        check_batch(arrays, config.num_features, config.dtype)


def test_rows_added_past_the_column_by_an_older_version_read_as_without_fingerprint(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts=COUNTS, phash=lambda k, name, i: k + 1)
    with h5py.File(cache, "a") as f:
        f["phash"].resize((3,))  # as if two rows were appended by a version that knew no fingerprints
    assert load_cache(cache).phash.tolist() == [1, 2, 3, 0, 0]
    write(cache, [row("img00004", has_features=False, phash=9), row("b1", phash=8)])
    assert load_cache(cache).phash.tolist() == [1, 2, 3, 0, 9, 8]


def test_a_damaged_fingerprint_column_is_refused_in_one_line(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts=COUNTS)
    with h5py.File(cache, "a") as f:
        f.create_dataset("phash", data=np.zeros(5, np.float32))
    with pytest.raises(CacheError, match=r"dataset 'phash' is float32 .* rerun the extract command"):
        load_cache(cache)


def _shard(path, prefix, phash):
    feature_cache(path, counts={"bcc": 2}, phash=phash)
    config = load_cache(path, features=False).config
    path.unlink()  # the same configuration, other image ids
    with CacheWriter(path, config, {"dataset": "s"}, ("bcc",)) as w:
        w.write_batch([dict(row(f"{prefix}{i}"), label="bcc", **({"phash": phash(i, "bcc", i)} if phash else {}))
                       for i in range(2)], np.ones((2, config.num_features), np.float32))
    return path


@pytest.mark.parametrize("virtual", [False, True])
def test_merge_carries_fingerprints_and_fills_none_for_a_shard_without(tmp_path, virtual):
    a = _shard(tmp_path / "a.h5", "a", lambda k, name, i: 100 + k)
    b = _shard(tmp_path / "b.h5", "b", None)
    c = _shard(tmp_path / "c.h5", "c", lambda k, name, i: 300 + k)
    mixed = merge_caches([a, b], tmp_path / "ab.h5", virtual=virtual).out
    assert load_cache(mixed).phash.tolist() == [100, 101, 0, 0]
    both = merge_caches([a, c], tmp_path / "ac.h5", virtual=virtual).out
    assert load_cache(both).phash.tolist() == [100, 101, 300, 301]
    with h5py.File(both) as f:
        assert f["phash"].is_virtual == virtual
    assert load_cache(merge_caches([b], tmp_path / "b2.h5", virtual=virtual).out).phash is None


def test_batches_joined_at_commit_apply_as_in_turn(tmp_path):
    """Many batches commit as blocks, with the result of applying them one by one: an id journaled twice keeps its
    last copy, an image that failed and then decoded is no longer failed, metadata columns differ between batches."""
    from bottleneck.cache.store import read_failed

    def run(cache, one_by_one: bool):
        config = load_cache(cache, features=False).config
        with CacheWriter(cache, config) as w:
            for k in range(40):
                rows = [row(f"n{k}-{i}") for i in range(3)] + [row(f"dup{k % 4}")]
                if k == 17:
                    rows = [dict(r, meta={"site": f"s{k}"}) for r in rows]
                failed = [("mel/late.jpg", "cannot decode", "f" * 64)] if k == 5 else []
                if k == 9:
                    rows.append(row("late"))  # mel/late.jpg, which failed in batch 5
                w.journal.write(rows, np.full((len(rows), config.num_features), k, np.float32), failed)
                if one_by_one:
                    w.commit()
        return load_cache(cache), read_failed(cache)

    joined, joined_failed = run(feature_cache(tmp_path / "a.h5", counts=COUNTS), False)
    single, single_failed = run(feature_cache(tmp_path / "b.h5", counts=COUNTS), True)
    assert list(joined.image_ids) == list(single.image_ids) and len(joined.image_ids) == 5 + 40 * 3 + 4 + 1
    np.testing.assert_array_equal(joined.features, single.features)
    assert joined.features[list(joined.image_ids).index("dup1")][0] == 37  # the last copy of dup1 (k = 37)
    assert joined_failed == single_failed == []
    assert {c: list(v) for c, v in joined.meta.items()} == {c: list(v) for c, v in single.meta.items()}
