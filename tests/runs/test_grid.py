"""A sweep's grid: TOML files, command-line values, the configurations they make, and grid keys that are the head
options' own (HEAD_OPTIONS)."""

from __future__ import annotations

import pytest

from bottleneck.errors import InputError
from bottleneck.heads.model import HEAD_OPTIONS, HeadConfig
from bottleneck.runs.grid import (
    GRID_KEYS,
    config_id,
    expand_grid,
    grid_from_options,
    load_grid_toml,
    parse_values,
    write_grid_toml,
)


def test_toml_grid_and_its_errors(tmp_path):
    f = tmp_path / "sweep.toml"
    f.write_text('lr = [1e-3, 3e-4]\ndropout = 0.5\nhidden = [[512, 512], [1024]]\noptimizer = ["adam"]\n')
    grid = load_grid_toml(f)
    assert grid == {"lr": [1e-3, 3e-4], "dropout": [0.5], "hidden": [(512, 512), (1024,)], "optimizer": ["adam"]}
    configs = expand_grid(grid)
    assert len(configs) == 4 and {c.hidden for c in configs} == {(512, 512), (1024,)}
    f.write_text("hidden = [256, 256]\n")  # a flat list is one architecture
    assert load_grid_toml(f) == {"hidden": [(256, 256)]}
    f.write_text("learning_rate = [0.1]\n")
    with pytest.raises(InputError, match="unknown grid key 'learning_rate'; known keys: hidden, dropout"):
        load_grid_toml(f)
    f.write_text('lr = ["fast"]\n')
    with pytest.raises(InputError, match="grid key 'lr': cannot read value 'fast'"):
        load_grid_toml(f)
    f.write_text("lr = [\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_grid_toml(f)
    f.write_text('optimizer = ["adamw"]\n')
    with pytest.raises(InputError, match="--optimizer should be one of rmsprop, adam, sgd; received 'adamw'"):
        expand_grid(load_grid_toml(f))


def test_grid_values_are_validated_and_duplicates_dropped():
    assert parse_values("hidden", ["512,512", "1024"]) == [(512, 512), (1024,)]
    with pytest.raises(InputError, match="--dropout should be in"):
        expand_grid({"dropout": [1.5]})
    assert len(expand_grid({"lr": [1e-3, 0.001]})) == 1


def test_grid_keys_are_the_sweepable_head_options_in_their_order():
    assert list(GRID_KEYS) == ["hidden", "dropout", "optimizer", "lr", "decay_rate", "decay_steps", "batch_size",
                               "class_weight", "seed", "epochs", "patience", "standardize"]
    assert set(GRID_KEYS) <= set(HEAD_OPTIONS.names())
    assert parse_values("standardize", ["false", True, "1"]) == [False, True, True]
    assert parse_values("hidden", [[512, 512], 1024, "0"]) == [(512, 512), (1024,), ()]


def test_command_line_values_win_over_the_file_and_keep_the_grid_order(tmp_path):
    f = tmp_path / "sweep.toml"
    f.write_text("lr = [1e-3]\nseed = [0, 1]\n")
    given = {"hidden": ["64", "32,32"], "dropout": "0.3, 0.5", "lr": "3e-4", "epochs": 4, "patience": None,
             "optimizer": None, "seed": None}
    grid = grid_from_options(f, given)
    # The file's keys first (in its order), then comma lists, repetitions and single values, as sweeps always did.
    assert grid == {"lr": [3e-4], "seed": [0, 1], "dropout": [0.3, 0.5], "hidden": [(64,), (32, 32)], "epochs": [4]}
    assert list(grid) == ["lr", "seed", "dropout", "hidden", "epochs"]
    assert grid_from_options(None, {"hidden": [], "lr": None}) == {}  # not given
    with pytest.raises(InputError, match="grid key 'dropout': cannot read value 'lots'"):
        grid_from_options(None, {"dropout": "0.3,lots"})


def test_a_configuration_id_depends_on_every_field():
    base = config_id(HeadConfig())
    assert base == config_id(HeadConfig()) and len(base) == 10
    for option in HEAD_OPTIONS:
        other = HeadConfig(**{option.name: {bool: lambda v: not v, tuple: lambda v: (7,), str: lambda v: v + "x"}
                              .get(type(option.default), lambda v: v + 1)(option.default)})
        assert config_id(other) != base, option.name


def test_a_sweeps_configurations_are_written_back_as_the_grid_that_makes_them(tmp_path):
    configs = expand_grid({"lr": [1e-3, 3e-4], "hidden": [(64,), (32, 32)], "standardize": [False]})
    assert write_grid_toml(configs, tmp_path / "grid.toml")
    again = expand_grid(load_grid_toml(tmp_path / "grid.toml"))
    assert {config_id(c) for c in again} == {config_id(c) for c in configs}
    # configurations that are not a full product of their values cannot be one grid: nothing is written
    assert not write_grid_toml(configs[:3], tmp_path / "part.toml") and not (tmp_path / "part.toml").exists()
