"""Options declared once: the machinery (defaults read from the dataclass, checks, command-line spelling, sweep
order), then one contract over every real table, as scikit-learn checks every estimator: defaults pass their own
checks and read back from the command line, refusals say what they always said, and the rerun commands a run
records are the argument lists they always were. (The CLI and the docs derived from the tables are tested in
tests/cli/test_params.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bottleneck.errors import InputError
from bottleneck.heads.class_map import parse_class_map
from bottleneck.heads.model import HEAD_OPTIONS, HeadConfig
from bottleneck.heads.splits import SplitSpec
from bottleneck.models.finetune import FINETUNE_OPTIONS, FineTuneOptions
from bottleneck.models.finetune import rerun_command as finetune_rerun
from bottleneck.runs.train import RunOptions
from bottleneck.runs.train import rerun_command as train_rerun
from bottleneck.util.options import Option, Options, one_of, positive, positive_int, read_bool

TABLES = [HEAD_OPTIONS, FINETUNE_OPTIONS]


@dataclass(frozen=True)
class Toy:
    rate: float = 0.5
    mode: str = "a"
    sizes: tuple = (4, 4)
    fast: bool = True
    root: Path | None = None
    unlisted: int = 3


TOY = Options(Toy, [
    Option("rate", "A rate.", check=positive, sweep="list"),
    Option("sizes", "Sizes.", type=str, parse=lambda t: tuple(int(x) for x in t.split(",")),
           show=lambda v: ",".join(map(str, v)), sweep="repeat"),
    Option("mode", "A mode.", check=one_of(("a", "b")), sweep="file"),
    Option("fast", "Fast or not.", parse=read_bool, sweep="one"),
    Option("root", "A folder.", type=Path),
])


def test_defaults_come_from_the_dataclass_and_each_option_is_declared_once():
    assert [(o.name, o.default) for o in TOY] == [("rate", 0.5), ("sizes", (4, 4)), ("mode", "a"), ("fast", True),
                                                 ("root", None)]
    assert TOY["rate"].flag == "--rate" and "unlisted" not in TOY and len(TOY) == 5
    assert [o.name for o in TOY.sweepable()] == ["sizes", "rate", "fast", "mode"]  # repeat, list, one, file
    with pytest.raises(ValueError, match="'rate' of Toy is declared twice"):
        Options(Toy, [Option("rate", "A rate."), Option("rate", "Again.")])
    with pytest.raises(ValueError, match="'speed' is not a field of Toy"):
        Options(Toy, [Option("speed", "No such field.")])
    with pytest.raises(ValueError, match="sweep should be one of"):
        Option("rate", "A rate.", sweep="sometimes")


def test_command_line_text_reads_back_to_the_value():
    assert TOY["sizes"].cli_default == "4,4" and TOY["sizes"].read("8,2") == (8, 2)
    assert TOY["rate"].cli_type is float and TOY["rate"].read("1e-3") == 1e-3
    assert TOY["root"].cli_type is Path and TOY["root"].read(None) is None and TOY["root"].read("x") == Path("x")
    assert TOY.argv(Toy(sizes=(), fast=False, root=Path("r"))) == ["--rate", "0.5", "--sizes", "", "--mode", "a",
                                                                 "--no-fast", "--root", "r"]
    assert TOY.argv(Toy(), ("fast", "rate")) == ["--fast", "--rate", "0.5"]
    assert [read_bool(v) for v in (True, "yes", "0", "False")] == [True, True, False, False]
    with pytest.raises(ValueError):
        read_bool("maybe")


def test_a_refusal_names_the_flag_the_problem_and_the_value():
    assert TOY.validate(Toy()) == Toy()
    with pytest.raises(InputError, match=r"^--rate should be positive; received -1$"):
        TOY.validate(Toy(rate=-1))
    with pytest.raises(InputError, match=r"^--mode should be one of a, b; received 'c'$"):
        TOY.validate(Toy(mode="c"))
    assert positive(float("nan")) and positive_int(0) and not positive_int(1)


# --- every real table --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.config.__name__)
def test_each_default_passes_its_check_and_reads_back_from_the_command_line(table):
    config = table.config()
    assert table.validate(config) is config
    flags = [o.flag for o in table]
    assert len(flags) == len(set(flags))
    for option in table:
        assert option.default == getattr(config, option.name)
        assert option.read(option.cli_default) == option.default, option.name
        if option.sweep not in (None, "file"):
            assert option.sweep_help, option.name


@pytest.mark.parametrize("config, message", [
    (HeadConfig(optimizer="adamw"), "--optimizer should be one of rmsprop, adam, sgd; received 'adamw'"),
    (HeadConfig(class_weight="auto"), "--class-weight should be balanced or none; received 'auto'"),
    (HeadConfig(dropout=1.5), r"--dropout should be in \[0, 1\); received 1.5"),
    (HeadConfig(hidden=(512, 0)), r"--hidden sizes should be positive integers; received \(512, 0\)"),
    (HeadConfig(lr=0.0), "--lr should be positive; received 0.0"),
    (HeadConfig(decay_rate=-0.5), "--decay-rate should be positive; received -0.5"),
    (HeadConfig(decay_steps=0), "--decay-steps should be a positive integer; received 0"),
    (HeadConfig(batch_size=0), "--batch-size should be a positive integer; received 0"),
    (HeadConfig(epochs=0), "--epochs should be a positive integer; received 0"),
    (FineTuneOptions(optimizer="adamw"), "--optimizer should be one of rmsprop, adam, sgd; received 'adamw'"),
    (FineTuneOptions(lr=-1e-5), "--lr should be positive; received -1e-05"),
    (FineTuneOptions(patience=0), "--patience should be a positive integer; received 0"),
    (FineTuneOptions(unfreeze="most"), r"--unfreeze should be a number of layer groups \(0, 1, 2, ...\) or 'all'; "
                                       "received 'most'"),
    (FineTuneOptions(precision="half"), "--precision should be one of auto, float32, bfloat16, float16; "
                                        "received 'half'"),
])
def test_refusals_say_what_they_always_said(config, message):
    with pytest.raises(InputError, match=f"^{message}$"):
        config.validate()
    assert HeadConfig(patience=0).validate()  # a head's patience is not checked (0: stop at the first worse epoch)


def old_train_head_command(cache, out, head, opts):
    """train-head's rerun command as runs/train.py spelled it by hand before the options were declared."""
    s = opts.split
    return ["bottleneck", "train-head", str(cache), "--out", str(out),
            "--hidden", ",".join(map(str, head.hidden)) or "0", "--dropout", str(head.dropout),
            "--optimizer", head.optimizer, "--lr", str(head.lr), "--decay-rate", str(head.decay_rate),
            "--decay-steps", str(head.decay_steps), "--batch-size", str(head.batch_size),
            "--epochs", str(head.epochs), "--patience", str(head.patience), "--class-weight", head.class_weight,
            "--standardize" if head.standardize else "--no-standardize", "--seed", str(head.seed),
            "--val", str(s.val), "--test", str(s.test)]


def old_fine_tune_command(run, opts):
    """fine-tune's rerun command as finetune.py spelled it by hand before the options were declared."""
    command = ["bottleneck", "fine-tune", str(run), "--unfreeze", str(opts.unfreeze), "--lr", str(opts.lr),
               "--epochs", str(opts.epochs), "--patience", str(opts.patience), "--optimizer", opts.optimizer,
               "--batch-size", str(opts.batch_size), "--seed", str(opts.seed), "--precision", opts.precision,
               "--augment" if opts.augment else "--no-augment"]
    command += ["--class-map", opts.class_map.spec] if opts.class_map else []
    return command + ["--data", str(opts.data)] * bool(opts.data) + ["--out", str(opts.out)] * bool(opts.out)


@pytest.mark.parametrize("head", [HeadConfig(), HeadConfig(hidden=(), dropout=0.0, lr=3e-4, decay_rate=1.0,
                                                            standardize=False, class_weight="none", seed=7),
                                  HeadConfig(hidden=(16,), epochs=3, batch_size=32, optimizer="sgd")])
def test_train_heads_rerun_command_is_the_argument_list_it_always_was(head):
    opts = RunOptions(split=SplitSpec.held_out(0.2, 0.1, head.seed), memory_gb=2.0, tta=True)
    new = train_rerun(Path("cache/c.h5"), Path("runs/r"), head, opts)
    old = old_train_head_command(Path("cache/c.h5"), Path("runs/r"), head, opts)
    assert new[:len(old)] == old and new[len(old):] == ["--target-sensitivity", "0.95", "--decision", "balanced",
                                                     "--duplicates", "group", "--memory-gb", "2", "--tta"]


@pytest.mark.parametrize("opts", [FineTuneOptions(), FineTuneOptions(unfreeze="all", lr=3e-6, augment=False,
                                                                     data=Path("images"), out=Path("runs/ft"),
                                                                     precision="bfloat16", seed=2),
                                  FineTuneOptions(unfreeze=0, class_map=parse_class_map("mel=mel;other=*"))])
def test_fine_tunes_rerun_command_is_the_argument_list_it_always_was(opts):
    assert finetune_rerun(Path("runs/r"), opts) == old_fine_tune_command(Path("runs/r"), opts)
