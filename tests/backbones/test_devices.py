"""--devices: which devices the backbone runs on, and MirroredStrategy replicas giving the features of one device.

No GPU is needed: two logical CPU devices stand in for two GPUs in a subprocess (TensorFlow fixes its devices at
start-up), so the mirrored path runs for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_image

from bottleneck.backbones.devices import resolve_devices
from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError

GPUS = ["/device:GPU:0", "/device:GPU:1"]
CPUS = ["/device:CPU:0"]


@pytest.mark.parametrize("spec, gpus, expected", [
    (None, [], CPUS), ("all", [], CPUS), ("all", GPUS, GPUS), ("cpu", GPUS, CPUS), ("1", GPUS, GPUS[1:]),
    ("0,1", GPUS, GPUS), ("/gpu:1,/gpu:0", GPUS, GPUS[::-1]), ("/device:CPU:0", GPUS, CPUS)])
def test_devices_resolve_to_visible_device_names(spec, gpus, expected):
    assert resolve_devices(spec, gpus, CPUS) == expected


@pytest.mark.parametrize("spec, gpus, message", [
    ("2", GPUS, "GPU 2 is not visible here (2 GPUs: /device:GPU:0, /device:GPU:1)"),
    ("0", [], "GPU 0 is not visible here (0 GPUs)"),
    ("tpu", GPUS, "'tpu' is not a device here"), ("0,0", GPUS, "names a device twice")])
def test_bad_devices_name_the_value_and_what_is_visible(spec, gpus, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(spec, gpus, CPUS)


@pytest.mark.slow  # a fresh CLI process (~9 s): `make test-slow`
def test_the_cli_refuses_an_invisible_gpu(tmp_path, class_tree):
    r = run_cli("extract", class_tree, "--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--quiet",
                "--devices", "3", "--cache", tmp_path / "c.h5")
    assert r.exit_code == 1 and "GPU 3 is not visible here" in r.output and not (tmp_path / "c.h5").exists()


MIRRORED = """
import sys
from pathlib import Path
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bottleneck.images.index import build_index
from bottleneck.extract.run import ExtractOptions, extract
root, out = sys.argv[1], Path(sys.argv[2])
for name, devices in (("one", "cpu"), ("two", "/cpu:0,/cpu:1")):
    s = extract(build_index(root), ExtractOptions(backbone="vgg16", weights="none", image_size=32, batch_size=3,
                cache=out / f"{name}.h5", progress=False, precision="float32", xla="off", dtype="float32",
                devices=devices))
    print(name, s.devices)
"""


@pytest.mark.slow  # a fresh process with two logical CPU devices (~10 s): `make test-slow`
def test_two_replicas_give_the_features_of_one_device(tmp_path):
    root = tmp_path / "data"
    for i in range(7):  # batches of 3 over 2 replicas: padded to 4, and a last batch of 1
        write_image(root / ("mel" if i % 2 else "nv") / f"{i}.png", seed=i, size=(60, 50))
    write_image(root / "nv" / "broken.jpg", seed=9)
    (root / "nv" / "broken.jpg").write_bytes(b"not an image")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(Path(__file__).parents[2]))
    run = subprocess.run([sys.executable, "-c", MIRRORED, str(root), str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "two ['/job:localhost/replica:0/task:0/device:CPU:0', '/job:localhost/replica:0/task:0/device:CPU:1']" \
        in run.stdout or "two ['/device:CPU:0', '/device:CPU:1']" in run.stdout, run.stdout
    one, two = load_cache(tmp_path / "one.h5"), load_cache(tmp_path / "two.h5")
    assert list(one.image_ids) == list(two.image_ids) and len(one.image_ids) == 7
    assert np.abs(one.features).max() > 1e-3  # features of real magnitude, so the comparison means something
    np.testing.assert_allclose(two.features, one.features, rtol=1e-5, atol=1e-6 * np.abs(one.features).max())
