"""A sweep's grid: the values of each head option it varies, from a TOML file and the command line, and the
configurations they make.

The grid keys are the sweepable options of HEAD_OPTIONS (heads/model.py), in their order; how one value of a key is
read is that option's own reader, so the grid, train-head and the sweep's command line agree by construction.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import fields, replace
from pathlib import Path

from ..errors import InputError
from ..heads import HEAD_OPTIONS, HeadConfig

# Grid keys and how one value is read; every other HeadConfig field is fixed for the whole sweep.
GRID_KEYS = {o.name: o.read for o in HEAD_OPTIONS.sweepable()}


def parse_values(key: str, values: list) -> list:
    """Convert and validate one grid key's values; errors name the key and the bad value."""
    if key not in GRID_KEYS:
        raise InputError(f"unknown grid key {key!r}; known keys: {', '.join(GRID_KEYS)}")
    out = []
    for v in values:
        try:
            out.append(GRID_KEYS[key](v))
        except (ValueError, TypeError, InputError):
            raise InputError(f"grid key {key!r}: cannot read value {v!r}") from None
    if not out:
        raise InputError(f"grid key {key!r} has no values")
    return out


def split_list(text: str) -> list[str]:
    """"1e-3,3e-4" -> ["1e-3", "3e-4"] (for every option but --hidden, whose commas are layer sizes)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def load_grid_toml(path: Path) -> dict[str, list]:
    """A TOML grid: `lr = [1e-3, 3e-4]`, `dropout = 0.5`, `hidden = [[512, 512], [1024]]` or `["512,512"]`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"grid file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"grid file {path} is not valid TOML: {exc}") from None
    grid = {}
    for key, value in raw.items():
        if key == "hidden" and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            value = [value]  # hidden = [512, 512] is one architecture, not two
        grid[key] = parse_values(key, value if isinstance(value, list) else [value])
    return grid


def option_values(key: str, given) -> list:
    """The values of one sweep option as the command line gave them (see SWEEP_MODES in util/options.py):
    comma-separated text ("list"), one item per repetition ("repeat") or one value ("one")."""
    mode = HEAD_OPTIONS[key].sweep
    if mode == "list":
        return parse_values(key, split_list(given))
    return parse_values(key, list(given) if mode == "repeat" else [given])


def grid_from_options(grid_file: Path | None = None, given: dict | None = None) -> dict[str, list]:
    """The grid of `bottleneck sweep`: a TOML file's keys, then options, which win over the file.

    given: the sweep options' values as the command line took them, per grid key (`option_values`); None, or an
    empty repetition, means the option was not given."""
    values = load_grid_toml(grid_file) if grid_file else {}
    given = {k: v for k, v in (given or {}).items() if v is not None and (HEAD_OPTIONS[k].sweep != "repeat" or v)}
    # Comma lists, then repetitions, then single values: the order of the grid's keys orders its configurations.
    for mode in ("list", "repeat", "one"):
        for key in [k for k in given if HEAD_OPTIONS[k].sweep == mode]:
            values[key] = option_values(key, given[key])
    return values


def expand_grid(grid: dict[str, list], base: HeadConfig = HeadConfig()) -> list[HeadConfig]:
    """Cartesian product of the grid over `base`, each configuration validated, duplicates dropped."""
    keys = list(grid)
    configs, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        cfg = replace(base, **dict(zip(keys, combo))).validate()
        if config_id(cfg) not in seen:
            seen.add(config_id(cfg))
            configs.append(cfg)
    return configs


def config_id(cfg: HeadConfig) -> str:
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, allow_nan=False).encode()).hexdigest()[:10]


def write_grid_toml(configs: list[HeadConfig], path: Path) -> bool:
    """The configurations as a grid file (`--grid`) that expands to exactly them, for a sweep's rerun command:
    each field's values in order of first appearance, where they are not one default. False (nothing written)
    where they are not a full product of their values (a grid cannot say them)."""
    default = HeadConfig()
    lines = []
    for f in fields(HeadConfig):
        values = []
        for cfg in configs:
            v = getattr(cfg, f.name)
            if v not in values:
                values.append(v)
        if values == [getattr(default, f.name)]:
            continue
        lines.append(f"{f.name} = [{', '.join(_toml_value(v) for v in values)}]")
    text = "\n".join(lines) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if {config_id(c) for c in expand_grid(load_grid_toml(path))} == {config_id(c) for c in configs}:
        return True
    path.unlink()
    return False


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v, allow_nan=False)
    return repr(v)
