"""Options declared once (util/options.py) and the command line derived from them (cli/params.py): each command
shows its declared options with their flags, types, defaults and help; a value reaches the library as the library
reads it; no declared option is written a second time by hand; and the docs list every one with its default."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

import bottleneck
from bottleneck.cli import app
from bottleneck.cli.app import handle_errors
from bottleneck.cli.params import declared, with_declared
from bottleneck.heads.model import HEAD_OPTIONS
from bottleneck.models.finetune import FINETUNE_OPTIONS

PACKAGE = Path(bottleneck.__file__).parent
DOCS = PACKAGE.parent / "docs"
TABLES = {"HEAD_OPTIONS": HEAD_OPTIONS, "FINETUNE_OPTIONS": FINETUNE_OPTIONS}
runner = CliRunner()


def declaring_commands() -> dict[str, list]:
    """Command name -> its declared options, as (Option, sweep) pairs, read from the app itself."""
    found = {c.name: getattr(c.callback, "declared", None) for c in app.registered_commands}
    return {name: options for name, options in found.items() if options}


def test_the_heads_and_fine_tune_commands_take_their_options_from_the_tables():
    commands = declaring_commands()
    assert set(commands) == {"train-head", "sweep", "fine-tune"}
    assert [o.name for o, _ in commands["train-head"]] == HEAD_OPTIONS.names()
    assert [o.name for o, _ in commands["fine-tune"]] == FINETUNE_OPTIONS.names()
    assert [o.name for o, sweep in commands["sweep"] if sweep] == [o.name for o in HEAD_OPTIONS.sweepable()
                                                                   if o.sweep != "file"]


def option_entries(text: str) -> dict[str, str]:
    """Each option of a --help text (its first flag) -> its entry (flags, type, help, default) on one line: click's
    plain help starts an entry at "  -" and wraps it onto more deeply indented lines."""
    entries: dict[str, list[str]] = {}
    last = None
    for line in text.splitlines():
        if line.startswith("  -"):
            last = line.split()[0].rstrip(",")
            entries[last] = [line]
        elif last and line.startswith("   "):
            entries[last].append(line)
        else:
            last = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


@pytest.mark.parametrize("command", ["train-head", "sweep", "fine-tune"])
def test_help_shows_each_declared_flag_with_its_type_default_and_help(command):
    lines = option_entries(runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output)
    for option, sweep in declaring_commands()[command]:
        line = lines[option.flag]
        help_text = option.sweep_help if sweep else option.help
        assert " ".join(help_text.split())[:40] in line, (option.name, line)
        if sweep:
            assert "[default" not in line and ("<list[str]>" if option.sweep == "repeat" else "<") in line
        elif option.cli_type is bool:
            assert f"--no-{option.flag[2:]}" in line
            assert f"[default: {'' if option.default else 'no-'}{option.flag[2:]}]" in line
        else:
            assert f"<{option.cli_type.__name__.lower()}>" in line
            if option.default is not None:
                assert f"[default: {option.cli_default}]" in line


def test_values_reach_the_library_as_it_reads_them(tmp_path):
    seen = {}
    tiny = typer.Typer()

    @tiny.command("train")
    @handle_errors
    @with_declared
    def train(out: Optional[Path] = typer.Option(None), head: dict = declared(HEAD_OPTIONS),
              quiet: bool = typer.Option(False, "--quiet")):
        seen.update(head, out=out, quiet=quiet)

    @tiny.command("sweep")
    @handle_errors
    @with_declared
    def sweep(given: dict = declared(HEAD_OPTIONS, sweep=True)):
        seen.update(given)

    r = runner.invoke(tiny, ["train", "--hidden", "64,32", "--no-standardize", "--lr", "3e-4", "--quiet"])
    assert r.exit_code == 0, r.output
    assert seen == {o.name: o.default for o in HEAD_OPTIONS} | {"hidden": (64, 32), "standardize": False,
                                                                "lr": 3e-4, "out": None, "quiet": True}
    r = runner.invoke(tiny, ["train", "--hidden", "64,x"])
    assert r.exit_code == 1 and r.output.startswith("error: --hidden should be comma-separated layer sizes")
    seen.clear()
    assert runner.invoke(tiny, ["sweep", "--hidden", "64", "--hidden", "8,8", "--lr", "1e-3,3e-4"]).exit_code == 0
    assert seen["hidden"] == ["64", "8,8"] and seen["lr"] == "1e-3,3e-4" and seen["epochs"] is None


# --- declared once ----------------------------------------------------------------------------------------------

def hand_spelled(source: str, flags: set[str]) -> list[str]:
    """String constants of `source` (docstrings aside) that spell one of `flags` (or its --no- form) exactly."""
    spelled = flags | {f"--no-{f[2:]}" for f in flags}
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in spelled]


def test_no_module_that_uses_a_table_spells_its_flags_by_hand():
    """A module that reads a table (the CLI, rerun commands, the grid, validation) takes each flag from it: an
    argument list or a typer.Option written with "--decay-rate" would be the option declared a second time."""
    users = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        for name, table in TABLES.items():
            if re.search(rf"\b{name}\b", source):
                users += 1
                assert hand_spelled(source, {o.flag for o in table}) == [], (path, name)
    assert users >= 8  # the tables' modules, train-head's and fine-tune's rerun commands, the grid, the CLI


def test_a_flag_written_by_hand_is_caught():
    assert hand_spelled('"""--lr in a docstring is prose"""\nARGS = ["--lr", str(1e-3), "--no-standardize"]\n',
                        {"--lr", "--standardize"}) == ["2: '--lr'", "2: '--no-standardize'"]
    with pytest.raises(ValueError, match="duplicate parameter name: 'decay_rate'"):
        @with_declared
        def twice(head: dict = declared(HEAD_OPTIONS), decay_rate: float = typer.Option(0.94)):
            pass


def test_every_flag_of_a_command_is_given_once():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        flags = [f for p in command.params for f in (*p.opts, *getattr(p, "secondary_opts", ())) if f.startswith("-")]
        assert len(flags) == len(set(flags)), name


# --- the docs ---------------------------------------------------------------------------------------------------

def doc_section(command: str) -> str:
    """The section of `bottleneck COMMAND` in docs/cli.md, or in the page cli.md sends it to (fine-tune.md)."""
    for page in ("cli.md", "fine-tune.md"):
        text = (DOCS / page).read_text()
        found = re.search(rf"^## `bottleneck {re.escape(command)}\b.*?(?=^## |\Z)", text, re.S | re.M)
        if found:
            return found.group(0)
    raise AssertionError(f"no section `bottleneck {command}` in docs/cli.md or docs/fine-tune.md")


def doc_defaults(section: str) -> dict[str, str]:
    """Flag -> its default cell, from every table row of a section (`--lr F`, `--decay-rate F` | 1e-3, 0.94)."""
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 2:
            continue
        flags = [re.match(r"--[a-z][a-z0-9-]*", code).group(0) for code in re.findall(r"`([^`]*)`", cells[0])
                 if code.startswith("--")]
        values = [v.strip() for v in cells[1].replace("`", "").split(", ")]
        for i, flag in enumerate(flags):
            out[flag] = values[i] if len(values) == len(flags) else cells[1].replace("`", "")
    return out


def same_default(option, text: str) -> bool:
    value = option.default
    if value is None:  # a default said in words ("the cache's root")
        return True
    if isinstance(value, bool):
        return text == ("on" if value else "off")
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return text == option.show(value)


@pytest.mark.parametrize("command", ["train-head", "sweep", "fine-tune"])
def test_the_docs_list_every_declared_option_with_its_default(command):
    section = doc_section(command)
    defaults = doc_defaults(section)
    for option, _ in declaring_commands()[command]:
        assert option.flag in defaults, f"docs: {option.flag} has no row in the section of `bottleneck {command}`"
        assert same_default(option, defaults[option.flag]), (option.flag, option.default, defaults[option.flag])
    if command == "sweep":  # a grid file's own keys are shown in its example
        for option in HEAD_OPTIONS.sweepable():
            assert re.search(rf"^{option.name} = ", section, re.M), option.name


def test_a_wrong_default_in_the_docs_is_caught():
    section = "| `--lr F`, `--decay-rate F` | 1e-3, 0.9 | |\n| `--standardize / --no-standardize` | off | |\n"
    defaults = doc_defaults(section)
    assert defaults == {"--lr": "1e-3", "--decay-rate": "0.9", "--standardize": "off"}
    assert same_default(HEAD_OPTIONS["lr"], defaults["--lr"])
    assert not same_default(HEAD_OPTIONS["decay_rate"], defaults["--decay-rate"])
    assert not same_default(HEAD_OPTIONS["standardize"], defaults["--standardize"])
