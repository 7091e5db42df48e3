"""`bottleneck --version`: our distribution's name and version, and the note about the pandas accelerator that
shares our import name."""

from importlib import metadata

from typer.testing import CliRunner

from bottleneck import __version__
from bottleneck.cli import app
from bottleneck.util import CLASH_NOTE, DISTRIBUTION


def test_version_names_the_distribution_and_the_clash():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"{DISTRIBUTION} {__version__}", f"note: {CLASH_NOTE}"]  # no warning here


def test_the_installed_distribution_is_ours_under_its_own_name():
    """The installed distribution is ours, under its own name, at the version `--version` says."""
    assert DISTRIBUTION == "bottleneck-derm"
    assert metadata.version(DISTRIBUTION) == __version__
    assert metadata.distribution(DISTRIBUTION).entry_points.select(group="console_scripts", name="bottleneck")


def third_party_imports() -> set[str]:
    """Top-level names of every third-party import under bottleneck/, those inside functions included."""
    import ast
    import sys
    from pathlib import Path

    names = set()
    for path in (Path(__file__).resolve().parents[2] / "bottleneck").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"bottleneck"}


def test_every_third_party_import_is_declared():
    """A clean `pip install bottleneck-derm` brings everything the package imports (scipy was once missing)."""
    import re

    owners = metadata.packages_distributions()  # import name -> distributions, e.g. sklearn -> scikit-learn
    declared = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in metadata.requires(DISTRIBUTION)}
    missing = {name for name in third_party_imports()
               if not {d.lower().replace("_", "-") for d in owners.get(name, [name])} & declared}
    assert missing == set()
