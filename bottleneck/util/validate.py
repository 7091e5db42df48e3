"""Validation at the doors of a run: its config.json and split.csv, a saved Keras model, each checked before
anything reads them, so that a damaged file is refused in one line naming the file, the field and the fix
instead of failing halfway with a traceback. (A cache's own checks are in `cache/checks.py`.)

Nothing here writes: a refused run directory is left exactly as it was."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..errors import InputError


def read_json_object(path: Path, fix: str) -> dict:
    """A JSON file that must hold an object; InputError naming the file and `fix` when it does not."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror}); {fix}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def check_split_file(path: Path, fix: str) -> None:
    """split.csv: text, header image_id,split; load_split checks its values."""
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().strip().lstrip("\ufeff")
            fh.read()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text split manifest (not UTF-8); {fix}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror}); {fix}") from None
    if header.split(",")[:2] != ["image_id", "split"]:
        raise InputError(f"{path} is not a split manifest (its header is {header[:40]!r}, expected "
                         f"'image_id,split'); {fix}")


def keras_layers(path: Path) -> list[str]:
    """Class names of every layer a .keras file's config.json holds (a .keras file is a zip archive); refuses a
    file that is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError):
        raise InputError(f"{path} is not a readable Keras model (a .keras file is a zip archive with a "
                         "config.json); it is damaged or of another format: restore it or rerun the command that "
                         "wrote it") from None
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str):
                found.append(node["class_name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def input_size_of(model) -> int:
    """The square side of an image model's input (B, S, S, 3), for a .keras file served without labels.json."""
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise InputError(f"the model takes input of shape {shape}, not images (batch, size, size, 3); pass a model "
                         "made by `bottleneck export --format keras` or a fine-tune run")
    return int(shape[1])
