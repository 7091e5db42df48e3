"""The one decode -> batch tf.data pipeline on real JPEG/PNG files and a corrupt one: inference keeps file order
and marks the bad file; training drops it and records why."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import write_image

from bottleneck.errors import ImageDecodeError
from bottleneck.images.decode import load_image
from bottleneck.images.pipeline import (
    augment_image,
    decode_threads,
    inference_batches,
    pad_batch,
    training_batches,
)

SIZE = 16


@pytest.fixture
def files(tmp_path):
    """Five files in a deliberate, unsorted order: JPEG 40x30, PNG 30x40, a corrupt JPEG, PNG 50x20, JPEG 40x30."""
    paths = [write_image(tmp_path / "z.jpg", seed=1),
             write_image(tmp_path / "a.png", seed=2, size=(30, 40)),
             tmp_path / "broken.jpg",
             write_image(tmp_path / "m" / "wide.png", seed=3, size=(50, 20)),
             write_image(tmp_path / "b.jpg", seed=4)]
    good = paths[0].read_bytes()
    paths[2].write_bytes(good[: len(good) // 3])  # a truncated JPEG
    return [str(p) for p in paths]


def test_inference_batches_keep_file_order_sizes_and_errors(files):
    batches = list(inference_batches(files, SIZE, batch_size=2))
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]  # the last batch is short
    pixels = np.concatenate([b[0].numpy() for b in batches])
    widths = np.concatenate([b[1].numpy() for b in batches])
    heights = np.concatenate([b[2].numpy() for b in batches])
    errors = [e.decode() for b in batches for e in b[3].numpy()]
    assert pixels.dtype == np.uint8 and pixels.shape == (5, SIZE, SIZE, 3)
    assert list(zip(widths, heights)) == [(40, 30), (30, 40), (0, 0), (50, 20), (40, 30)]
    assert [bool(e) for e in errors] == [False, False, True, False, False]
    with pytest.raises(ImageDecodeError) as err:
        load_image(files[2], SIZE)
    assert errors[2] == str(err.value)  # the loader's own reason
    assert not pixels[2].any()  # the unreadable image is black
    for i in (0, 1, 3, 4):  # the same pixels as the loader gives, in the order of `files`
        np.testing.assert_array_equal(pixels[i], load_image(files[i], SIZE)[0])
    assert len({pixels[i].tobytes() for i in (0, 1, 3, 4)}) == 4


def test_pad_batch_pads_with_zero_rows_to_the_batch_size():
    import tensorflow as tf

    x = tf.constant(np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3) + 1)
    padded = pad_batch(x, 5)
    assert tuple(padded.shape) == (5, 2, 2, 3) and padded.dtype == tf.uint8
    np.testing.assert_array_equal(padded.numpy()[:3], x.numpy())
    assert not padded.numpy()[3:].any()
    assert pad_batch(x, 3) is x and pad_batch(x, 2) is x  # a full batch is left alone


def test_training_batches_drop_and_record_the_unreadable_file(files):
    labels = np.array([0, 1, 2, 1, 0])
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    failures: dict = {}
    ds = training_batches(files, labels, weights, SIZE, 3, failures, augment=False, shuffle=False)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _, _ in batches] == [3, 1]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    w = np.concatenate([b[2].numpy() for b in batches])
    assert x.dtype == np.float32 and x.shape == (4, SIZE, SIZE, 3)
    assert y.tolist() == [0, 1, 1, 0] and w.tolist() == [1.0, 2.0, 4.0, 5.0]
    for row, i in enumerate((0, 1, 3, 4)):
        np.testing.assert_array_equal(x[row], load_image(files[i], SIZE)[0].astype(np.float32))
    assert list(failures) == [files[2]] and failures[files[2]]


def test_training_batches_shuffle_and_augment_keep_every_readable_example(files):
    labels = np.array([0, 1, 2, 1, 0])
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    failures: dict = {}
    ds = training_batches(files, labels, weights, SIZE, 2, failures, augment=True, shuffle=True, seed=3)
    epochs = []
    for _ in range(3):
        x, y, w = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy(), c.numpy()) for a, b, c in ds]))
        assert x.dtype == np.float32 and x.shape == (4, SIZE, SIZE, 3) and 0 <= x.min() and x.max() <= 255
        assert sorted(zip(y.tolist(), w.tolist())) == [(0, 1.0), (0, 5.0), (1, 2.0), (1, 4.0)]
        epochs.append(w.tolist())
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch
    assert list(failures) == [files[2]]


def test_augment_image_is_a_dihedral_view_up_to_small_jitter():
    import tensorflow as tf

    tf.random.set_seed(0)
    img = np.zeros((8, 8, 3), np.float32)
    img[0, 0] = 255  # one bright corner: wherever it goes, the image is a flip/rotation of the original
    seen = set()
    for _ in range(8):
        out = augment_image(tf.constant(img)).numpy()
        assert out.shape == (8, 8, 3) and out.min() >= 0 and out.max() <= 255
        corners = np.array([out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]).mean(axis=1)
        assert (corners > 200).sum() == 1  # the bright pixel is still in one corner, barely dimmed
        assert np.sort(out.mean(axis=2).ravel())[-2] < 60  # every other pixel stays dark
        seen.add(int(np.argmax(corners)))
    assert len(seen) > 1  # the view is drawn at random


def test_inference_batches_fingerprint_the_pixels_they_yield(files):
    from bottleneck.images.fingerprint import NO_FINGERPRINT, perceptual_hash

    batches = list(inference_batches(files, SIZE, batch_size=2, fingerprints=True))
    pixels = np.concatenate([b[0].numpy() for b in batches])
    hashes = np.concatenate([b[4].numpy() for b in batches])
    assert hashes.dtype == np.uint64 and hashes.shape == (5,)
    assert hashes[2] == NO_FINGERPRINT  # the unreadable file has none
    for i in (0, 1, 3, 4):  # each the hash of the very pixels the backbone gets
        assert hashes[i] == perceptual_hash(pixels[i]) != NO_FINGERPRINT
    plain = list(inference_batches(files, SIZE, batch_size=2))
    assert all(len(b) == 4 for b in plain)  # without fingerprints: what every other caller unpacks


def test_pipelines_run_without_tf_data_autotuning_and_decode_on_every_core(files):
    """tf.data's autotuning thread sleeps between rounds on a doubling timer, and an iterator's end waited for that
    sleep: seconds after the last batch of an extraction. Both pipelines fix their parallelism instead."""
    labels, weights = np.zeros(5), np.ones(5)
    for ds in (inference_batches(files, SIZE, 2, fingerprints=True),
               training_batches(files, labels, weights, SIZE, 2, {}, augment=True, shuffle=True)):
        assert ds.options().autotune.enabled is False
    assert decode_threads() == len(os.sched_getaffinity(0))
    one = list(inference_batches(files, SIZE, 2, threads=1))  # one decoding thread: the same batches, in order
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in one]),
                                  np.concatenate([b[0].numpy() for b in inference_batches(files, SIZE, 2)]))
