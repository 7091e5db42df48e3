"""A small synthetic dermoscopy-like image set, so `bottleneck demo` and the tests run without HAM10000.

The project can neither ship nor download HAM10000, so the demo draws its own lesions with numpy and
writes them as real JPEG files, laid out like HAM10000 (a metadata CSV, two image folders, several
photos of one lesion) or as class folders. The classes follow the dermoscopy textbook closely enough
that a CNN bottleneck plus a small head can learn them, but with overlapping sizes, colours and
nuisances (hair, vignetting, skin tone) so that no single pixel statistic gives the answer:

- nv (benign nevus): round or oval, symmetric, smooth regular border, uniform medium brown.
- mel (melanoma): larger, asymmetric, ragged border, several colours (dark brown, black,
  blue-grey, red patches).
- bcc (basal cell carcinoma): pink and pearly, translucent, thin red branching vessels
  (telangiectasia), sometimes blue-grey ovoid nests.

Class sizes follow HAM10000's imbalance in miniature: nv, the majority class, gets twice
`images_per_class`; bcc and mel get `images_per_class` each.

Everything random comes from `numpy.random.default_rng` seeded by `seed`, so one seed gives the same
JPEG bytes every time (with the same numpy, Pillow and libjpeg builds on the same machine).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..util import write_text_atomic
from .lesions import LOOKS as _LOOKS
from .lesions import Canvas as _Canvas
from .lesions import draw_lesion as _draw_lesion
from .lesions import photograph as _photograph
from .lesions import to_image as _to_image

DEMO_CLASSES: tuple[str, ...] = ("bcc", "mel", "nv")
LAYOUTS: tuple[str, ...] = ("ham10000", "folders")
# As in the released HAM10000 metadata, whose `dataset` column names the site (vidir_modern, rosendahl, ...).
HAM10000_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization",
                                     "dataset")
DEMO_SITES: tuple[tuple[str, float], ...] = (("site_a", 0.6), ("site_b", 0.4))  # two made-up clinics
METADATA_NAME = "HAM10000_metadata.csv"
MARKER_NAME = "demo.json"
_PARTS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
# Bump when the drawing or the layout changes: a folder made by older code then no longer counts as
# "the same dataset" and is not silently reused. 2: the metadata gained the `dataset` (site) column.
_FORMAT = 2
_JPEG_QUALITY = 90
# Images per lesion in the HAM10000 layout: 1, 2 or 3 (mean 1.55; the real set has 1.34).
_PHOTOS_P = (0.6, 0.25, 0.15)


@dataclass(frozen=True)
class DemoDataset:
    root: Path  # the folder to pass to `bottleneck extract`
    metadata: Path | None  # HAM10000_metadata.csv, or None for class folders
    n_images: int
    n_lesions: int
    class_counts: dict[str, int]  # images per class, in DEMO_CLASSES order


@dataclass(frozen=True)
class _Lesion:
    lesion_id: str
    dx: str
    dx_type: str
    age: str
    sex: str
    localization: str
    dataset: str  # the (made-up) site that photographed it, for subgroup reports
    image_ids: tuple[str, ...]
    seed: tuple[int, int]  # (dataset seed, lesion number): this lesion's own random stream


def make_demo_dataset(out_dir, *, images_per_class: int = 40, image_size: int = 128, seed: int = 0,
                      layout: str = "ham10000") -> DemoDataset:
    """Write a synthetic labelled dermoscopy-like JPEG set into `out_dir` and describe it.

    `layout="ham10000"` writes HAM10000_metadata.csv and HAM10000_images_part_{1,2}/ISIC_*.jpg with
    one to three photos per lesion; `layout="folders"` writes `<class>/ISIC_*.jpg` with one photo per
    lesion (class folders carry no lesion id, so repeated photos would leak across a split).
    A folder that already holds the same dataset (same parameters, see demo.json) is returned as is.

    Example: `ds = make_demo_dataset("demo_data"); build_index(ds.root, ds.metadata)`.
    """
    images_per_class = _check_int("images_per_class", images_per_class, 1, 100_000)
    image_size = _check_int("image_size", image_size, 32, 2048)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if layout not in LAYOUTS:
        raise InputError(f"The `layout` argument should be one of {', '.join(map(repr, LAYOUTS))}. "
                         f"Received: layout={layout!r}")
    out = Path(out_dir).expanduser()
    params = {"format": _FORMAT, "images_per_class": images_per_class, "image_size": image_size,
              "seed": seed, "layout": layout}
    existing = _existing_dataset(out, params)
    if existing is not None:
        return existing

    lesions = _plan(images_per_class, seed, multi_photo=(layout == "ham10000"))
    files = _file_names(lesions, layout)
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted({Path(f).parent for f in files.values()}):
        (out / folder).mkdir(parents=True, exist_ok=True)

    canvas = _Canvas.for_size(image_size)
    for lesion in lesions:
        rng = np.random.default_rng(lesion.seed)
        base = _to_image(_draw_lesion(rng, lesion.dx, canvas))
        vignetting = rng.uniform(0.15, 0.45)  # one dermatoscope per lesion: its photos darken alike
        for image_id in lesion.image_ids:
            photo = _photograph(rng, base, canvas, vignetting)
            photo.save(out / files[image_id], format="JPEG", quality=_JPEG_QUALITY)

    metadata = None
    if layout == "ham10000":
        metadata = out / METADATA_NAME
        _write_metadata(metadata, lesions)
    counts = {c: sum(len(les.image_ids) for les in lesions if les.dx == c) for c in DEMO_CLASSES}
    dataset = DemoDataset(out.resolve(), metadata.resolve() if metadata else None,
                          sum(counts.values()), len(lesions), counts)
    # The marker goes last and atomically: its presence means every file above was written.
    marker = {"params": params, "n_images": dataset.n_images, "n_lesions": dataset.n_lesions,
              "class_counts": counts, "metadata": METADATA_NAME if metadata else None,
              "files": sorted(files.values())}
    write_text_atomic(out / MARKER_NAME, json.dumps(marker, indent=1, allow_nan=False) + "\n")
    return dataset


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InputError(f"`{name}` should be an integer from {low} to {high}. Received: {name}={value!r}")
    return int(value)  # a plain int, so it goes into demo.json as is


def _existing_dataset(out: Path, params: dict) -> DemoDataset | None:
    """The dataset already in `out` when it was made with `params`; None when `out` is new or empty."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise InputError(f"demo output {out} is a file; pass an empty or new folder")
    # Hidden files (.DS_Store and the like) do not make a folder "not empty".
    if not any(not p.name.startswith(".") for p in out.iterdir()):
        return None
    marker = out / MARKER_NAME
    if not marker.is_file():
        raise InputError(f"demo output folder {out} is not empty and holds no demo dataset (no {MARKER_NAME}); "
                         "pass an empty or new folder (a half-written demo folder can be deleted)")
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        made_with, files = info["params"], list(info["files"])
        counts = {str(k): int(v) for k, v in info["class_counts"].items()}
        n_images, n_lesions, meta_name = int(info["n_images"]), int(info["n_lesions"]), info["metadata"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot read the demo marker {marker} ({exc!r}); pass an empty or new folder") from None
    if made_with != params:
        raise InputError(f"{out} holds a demo dataset made with {_describe(made_with)}, not {_describe(params)}; "
                         "pass the same parameters to reuse it, or an empty or new folder")
    missing = [f for f in files + ([meta_name] if meta_name else []) if not (out / f).is_file()]
    if missing:
        raise InputError(f"the demo dataset in {out} is incomplete: {len(missing)} files are missing "
                         f"(e.g. {missing[0]}); delete the folder or pass an empty or new one")
    metadata = (out / meta_name).resolve() if meta_name else None
    return DemoDataset(out.resolve(), metadata, n_images, n_lesions, counts)


def _describe(params) -> str:
    if not isinstance(params, dict):
        return repr(params)
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------------
# The plan: which lesions, how many photos each, ids and metadata. Cheap; no pixels.


def _plan(images_per_class: int, seed: int, multi_photo: bool) -> list[_Lesion]:
    rng = np.random.default_rng(seed)
    drafts = []  # (dx, n_photos)
    for dx in DEMO_CLASSES:
        left = _LOOKS[dx].share * images_per_class
        while left > 0:
            n = int(rng.choice(len(_PHOTOS_P), p=_PHOTOS_P)) + 1 if multi_photo else 1
            drafts.append((dx, min(n, left)))
            left -= drafts[-1][1]
    # Shuffled ids, so neither the lesion id nor the image id gives away the class, and the photos of
    # one lesion get scattered image ids as in HAM10000.
    drafts = [drafts[i] for i in rng.permutation(len(drafts))]
    image_numbers = iter(rng.permutation(sum(n for _, n in drafts)) + 1)
    # Sites come from a stream of their own (entropy of another length than any lesion's), so that adding them
    # changed no other column and no pixel.
    site_rng = np.random.default_rng([seed, 0, 1])
    lesions = []
    for number, (dx, n) in enumerate(drafts, start=1):
        look = _LOOKS[dx]
        lesions.append(_Lesion(
            lesion_id=f"HAM_{number:07d}",
            dx=dx,
            dx_type=_pick(rng, look.dx_type),
            # HAM10000 records age in steps of five years, written as a float.
            age=f"{float(np.clip(5 * round(rng.normal(*look.age) / 5), 5, 85)):.1f}",
            sex=str(rng.choice(("male", "female"))),
            localization=_pick(rng, look.localization),
            dataset=_pick(site_rng, DEMO_SITES),
            image_ids=tuple(sorted(f"ISIC_{next(image_numbers):07d}" for _ in range(n))),
            seed=(seed, number),
        ))
    return lesions


def _pick(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*weighted)
    p = np.asarray(weights, float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _file_names(lesions: list[_Lesion], layout: str) -> dict[str, str]:
    """image id -> POSIX path relative to the dataset root."""
    if layout == "folders":
        return {i: f"{les.dx}/{i}.jpg" for les in lesions for i in les.image_ids}
    ids = sorted(i for les in lesions for i in les.image_ids)
    half = (len(ids) + 1) // 2  # like HAM10000: the lower ids in part 1, the rest in part 2
    return {i: f"{_PARTS[k >= half]}/{i}.jpg" for k, i in enumerate(ids)}


def _write_metadata(path: Path, lesions: list[_Lesion]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HAM10000_COLUMNS)
        for les in lesions:  # already in lesion-id order; a lesion's photos stay together as in HAM10000
            for image_id in les.image_ids:
                writer.writerow((les.lesion_id, image_id, les.dx, les.dx_type, les.age, les.sex, les.localization,
                                 les.dataset))


# ---------------------------------------------------------------------------------------------------
# Drawing. Fields are (side, side) or channel-first (3, side, side) float32 on a canvas of side
