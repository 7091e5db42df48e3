"""Shared fixtures and helpers: small real image trees written with Pillow, tiny backbones with weights=None,
the CLI runner, and the session-scoped runs that many tests share (built once: a head run costs seconds, a
fine-tune more); tests copy what they write into."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np
import pytest
from PIL import Image

# Small and cheap: vgg16 at 32 px builds in a second, runs hundreds of images/s on 2 cores, and its
# random-init features are O(0.1) (mobilenet_v2 and efficientnet ones are ~1e-12, below float16).
TINY = dict(backbone="vgg16", weights="none", image_size=32)


@pytest.fixture(scope="session", autouse=True)
def auto_is_float32():
    """`--precision auto` resolves to float32 in tests, as on a CPU without native bf16, so that every machine
    computes the same features (a random VGG's differ between images by ~1e-3, bf16's own rounding). Tests of the
    real choice pass the CPU flags explicitly, or restore `REAL_FASTEST_NATIVE`."""
    import bottleneck.backbones.precision as precision

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "fastest_native", lambda gpu=None, flags=None: "float32")
        yield


def _real_fastest_native():
    from bottleneck.backbones.precision import fastest_native

    return fastest_native


REAL_FASTEST_NATIVE = _real_fastest_native()


def write_image(path, seed: int, size=(40, 30), fmt: str | None = None, mode: str = "RGB"):
    """A real image file whose pixels depend on seed (so files differ and SHA-256s differ)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = (base[None, None, :] + 60 * np.sin((xx[..., None] + seed) / (3 + seed % 5))
           + 40 * np.cos(yy[..., None] / 4.0)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None))
    return path


@pytest.fixture
def class_tree(tmp_path):
    """DATA/<class>/*: 3 classes x 4 images, mixed JPEG and PNG, one class name with a space."""
    root = tmp_path / "data"
    k = 0
    for cls in ("bcc", "mel", "nevus benign"):
        for i in range(4):
            ext = ".jpg" if i % 2 == 0 else ".png"
            write_image(root / cls / f"img{i}{ext}", seed=k)
            k += 1
    return root


def make_ham(root, n_lesions=6, images_per_lesion=2, crlf=False, bom=False, extra_rows=(), extra_images=()):
    """A HAM10000-style folder: HAM10000_metadata.csv + HAM10000_images_part_1/ and _part_2/."""
    classes = ("mel", "nv", "bkl")
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    k = 0
    for les in range(n_lesions):
        for _j in range(images_per_lesion):
            image_id = f"ISIC_{k:07d}"
            part = 1 if k % 2 == 0 else 2
            write_image(root / f"HAM10000_images_part_{part}" / f"{image_id}.jpg", seed=100 + k)
            lines.append(f"HAM_{les:07d},{image_id},{classes[les % 3]},histo,50.0,male,back")
            k += 1
    lines.extend(extra_rows)
    for name in extra_images:
        write_image(root / "HAM10000_images_part_1" / name, seed=999)
    text = ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")
    (root / "HAM10000_metadata.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return root


def hostile_tree(tmp_path):
    """A class tree a hostile user makes: a/ and b/ with 3 images each, a/loop -> .. (the root), a/alias -> ../b,
    a/out.jpg -> a file outside the root, b/ext -> a folder outside it. Returns the root."""
    root = tmp_path / "data"
    for k, cls in enumerate("ab"):
        for i in range(3):
            write_image(root / cls / f"x{i}.jpg", seed=10 * k + i)
    write_image(tmp_path / "outside.jpg", seed=50)
    write_image(tmp_path / "ext" / "o.jpg", seed=51)
    (root / "a" / "loop").symlink_to("..")
    (root / "a" / "alias").symlink_to("../b")
    (root / "a" / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "b" / "ext").symlink_to(tmp_path / "ext")
    return root


def feature_cache(path, counts=None, dim=32, images_per_group=2, seed=0, backbone="vgg16", separation=1.5,
                  class_names=None, meta=None, source=None, phash=None):
    """A real cache written through the library's writer, with synthetic class-dependent features:
    train-head tests need no CNN pass. counts: {class name: images}; groups of `images_per_group`; meta: a function
    (row number, class name, number within the class) -> {column: text}, the row's metadata columns; source: the
    cache's `source` attribute (as extract records it: ham10000, isic2020, csv, ...); phash: a function (row number,
    class name, number within the class) -> int, the row's perceptual fingerprint (stored as `phash`; without it the
    cache has no fingerprint column, as one extracted before fingerprints)."""
    from bottleneck.cache.store import CacheConfig
    from bottleneck.cache.writer import CacheWriter

    counts = {"bcc": 60, "mel": 60, "nv": 120} if counts is None else counts
    rng = np.random.default_rng(seed)
    config = CacheConfig(backbone=backbone, weights="none", weights_sha256="", seed=0, input_size=32,
                         pooling="avg", preprocessing="test", dtype="float16", num_features=dim)
    centers = rng.normal(0, separation, size=(len(counts), dim))
    rows, feats, k = [], [], 0
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            group = f"L{c}-{i // images_per_group}" if images_per_group else ""
            rows.append(dict(image_id=f"img{k:05d}", path=f"{name}/img{k:05d}.jpg", label=name, group=group,
                             sha256=f"{k:064x}", width=40, height=30, **({"meta": meta(k, name, i)} if meta else {}),
                             **({"phash": int(phash(k, name, i))} if phash else {})))
            feats.append(centers[c] + rng.normal(0, 1, dim))
            k += 1
    info = {"dataset": "synthetic", **({"source": source} if source else {})}
    with CacheWriter(path, config, info, tuple(class_names or sorted(counts))) as w:
        w.write_batch(rows, np.array(feats, dtype=np.float32))
    return path


def restamp(path, sha256=None, salt=None, source=None):
    """Edit a cache in place: its rows' SHA-256s (given, or salted so that no row shares bytes with another cache)
    and its `source` attribute."""
    with h5py.File(path, "a") as f:
        n = int(f.attrs["n_rows"])
        if salt is not None:
            sha256 = [f"{salt}{k:063x}" for k in range(n)]
        if sha256 is not None:
            f["sha256"][:n] = np.array(sha256, dtype=object)
        if source is not None:
            f.attrs["source"] = source
    return path


# --- shared by extraction and cache-writer tests -----------------------------------------------------------------

def extract_opts(tmp_path, **kw):
    """ExtractOptions of the tiny backbone writing tmp_path/c.h5, in batches of 4, quietly."""
    from bottleneck.extract.run import ExtractOptions

    base = dict(TINY, cache=tmp_path / "c.h5", batch_size=4, progress=False)
    base.update(kw)
    return ExtractOptions(**base)


def file_digest(path) -> str:
    """SHA-256 of a file computed here with hashlib (independent of the library's own helper)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the CLI -----------------------------------------------------------------------------------------------------

TINY_ARGS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--quiet"]


def run_cli(*args):
    """The real CLI through typer's CliRunner; arguments may be paths or numbers."""
    from typer.testing import CliRunner

    from bottleneck.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# --- real processes without five seconds of start-up each: forked from a server (faultinject.py serve) -----------

SERVER: dict = {}  # the server process, started once per session


def _server() -> subprocess.Popen:
    if "proc" not in SERVER:
        path = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
        SERVER["proc"] = subprocess.Popen([sys.executable, str(Path(__file__).with_name("faultinject.py")), "serve"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    return SERVER["proc"]


def pytest_collection_finish(session):
    """Start the server as soon as the tests are known, when one of them needs it: its imports (TensorFlow, ~5 s)
    run on the other core while the first tests run."""
    if session.config.option.collectonly:
        return
    if any("forked" in getattr(item, "fixturenames", ()) for item in session.items):
        _server()


class Forked:
    """A child of the server: a real process with its own pid, exit code, stdout and stderr (files)."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path):
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask(op="poll", pid=self.pid)["rc"]
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        if self.returncode is None:
            reply = self.server.ask(op="wait", pid=self.pid, timeout=timeout)
            self.returncode = reply["rc"]
            assert not reply["timed_out"], f"still running after {timeout} s: {self.stderr[-2000:]}"
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


class ForkServer:
    """`start` runs `bottleneck ARGS` (or `python -c CODE ARGS`) as a child forked from a process that has imported
    TensorFlow, Keras and the CLI: what a fresh `python -m bottleneck` does after its start-up, in a real process
    that can be killed, limited (fsize: RLIMIT_FSIZE) and read (exit code, stderr)."""

    def __init__(self, proc: subprocess.Popen, folder: Path):
        self.proc, self.folder, self.n = proc, folder, 0
        self.answer()  # ready: imports done

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server (tests/faultinject.py serve) ended with {self.proc.wait()}")
        return json.loads(line)

    def start(self, *args, code: str | None = None, cwd=None, env: dict | None = None,
              fsize: int | None = None) -> Forked:
        self.n += 1
        out, err = self.folder / f"{self.n}.out", self.folder / f"{self.n}.err"
        pid = self.ask(op="start", args=[str(a) for a in args], code=code, cwd=str(cwd or self.folder),
                       env={k: (None if v is None else str(v)) for k, v in (env or {}).items()}, fsize=fsize,
                       out=str(out), err=str(err))["pid"]
        return Forked(self, pid, out, err)

    def run(self, *args, timeout: float = 300, **kw) -> Forked:
        child = self.start(*args, **kw)
        child.wait(timeout)
        return child


@pytest.fixture(scope="session")
def forked(tmp_path_factory):
    """The session's ForkServer."""
    proc = _server()
    yield ForkServer(proc, tmp_path_factory.mktemp("forked"))
    proc.stdin.close()  # the server ends at the end of its requests
    proc.wait(timeout=60)
    proc.stdout.close()


# --- one head run off a synthetic cache: a session fixture shared by train-head and evaluate tests ----------------

# What train-head tests fit: early stopping has room to act, and each fit is still a second or two.
FAST_HEAD = dict(epochs=8, patience=4)


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory):
    """feature_cache's default classes (bcc 60, mel 60, nv 120) in groups (lesions) of 3 and one head run off it
    with FAST_HEAD, made once: a run costs seconds (Keras tracing, four PNGs). Both are read-only; a test that writes
    into the run (evaluate writes eval-*/ there, --overwrite replaces it) works on
    `copy_run(synth_run["run"], tmp_path)`."""
    from bottleneck.heads.model import HeadConfig
    from bottleneck.runs import RunOptions, train_head_run

    tmp = tmp_path_factory.mktemp("synth")
    cache = feature_cache(tmp / "feat.h5", images_per_group=3)
    r = train_head_run(cache, HeadConfig(**FAST_HEAD), RunOptions(out=tmp / "run", progress=False))
    return {"cache": cache, "run": r.run_dir}


def copy_run(run, folder, name: str = "run") -> Path:
    """A copy of a run directory in `folder` (its config.json still names the cache it was trained on)."""
    return Path(shutil.copytree(run, Path(folder) / name))


# --- a real head run and one fine-tune of it: session fixtures shared by fine-tune and serve tests ----------------

# lr 1e-5 as in the default: a random-init VGG16 diverges at 1e-4. No augmentation, so that losses compare.
OPTS = dict(epochs=3, patience=3, lr=1e-5, batch_size=8, augment=False, progress=False)


@pytest.fixture(scope="session")
def ham_run(tmp_path_factory):
    """A HAM10000-style tree (9 lesions x 2 images, 3 classes), its vgg16/32px cache and a head run."""
    from bottleneck.extract.run import ExtractOptions, extract
    from bottleneck.heads.model import HeadConfig
    from bottleneck.images.index import build_index
    from bottleneck.runs import RunOptions, train_head_run

    tmp = tmp_path_factory.mktemp("ham")
    root = make_ham(tmp / "ham", n_lesions=9, images_per_lesion=2)
    extract(build_index(root), ExtractOptions(**TINY, cache=tmp / "c.h5", progress=False))
    # No standardisation, no dropout: a random-init VGG's features vary by ~1e-3 between images, and standardising
    # them turns any backbone update into huge logits; without dropout the training loss is a clean signal.
    train_head_run(tmp / "c.h5", HeadConfig(epochs=3, patience=2, hidden=(16,), standardize=False, dropout=0.0),
                   RunOptions(out=tmp / "run", progress=False))
    return {"root": root, "cache": tmp / "c.h5", "run": tmp / "run", "tmp": tmp}


def split_paths(ham_run) -> dict[str, set[str]]:
    """Absolute image paths of ham_run's train/val/test splits."""
    import pandas as pd

    from bottleneck.cache.store import load_cache

    data = load_cache(ham_run["cache"], features=False)
    split = pd.read_csv(ham_run["run"] / "split.csv").set_index("image_id")["split"]
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for image_id, rel in zip(data.image_ids, data.paths):
        out[split[image_id]].add(str(ham_run["root"] / rel))
    return out


@pytest.fixture(scope="session")
def tuned(ham_run):
    """One fine-tune, with one test image corrupted first and every image the training pipeline reads recorded."""
    import keras

    import bottleneck.images.pipeline as image_data
    from bottleneck.models.finetune import FineTuneOptions, fine_tune

    paths = split_paths(ham_run)
    bad_test = sorted(paths["test"])[0]
    with open(bad_test, "wb") as f:
        f.write(b"this is not a JPEG any more")

    read: list[str] = []
    training = [True]  # reads until training ends; evaluation, which reads every split, comes after
    real = image_data.load_image

    def recording(path, size=None):
        if training[0]:
            read.append(str(path))
        return real(path, size)

    class EndOfTraining(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            training[0] = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_data, "load_image", recording)  # the one image pipeline's loader
        r = fine_tune(ham_run["run"], FineTuneOptions(out=ham_run["tmp"] / "ft", **OPTS), callbacks=[EndOfTraining()])
    return {"result": r, "read": read, "bad_test": bad_test, "paths": paths}


def train_loss(model, ham_run, paths) -> float:
    """Mean cross-entropy of `model` (raw images in) on ham_run's training images."""
    from bottleneck.cache.store import load_cache
    from bottleneck.images.decode import load_image

    data = load_cache(ham_run["cache"], features=False)
    label = {str(ham_run["root"] / p): y for p, y in zip(data.paths, data.labels)}
    files = sorted(paths["train"])
    x = np.stack([load_image(p, 32)[0] for p in files]).astype(np.float32)
    p = model.predict(x, verbose=0)
    y = np.array([label[f] for f in files])
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())
