"""The import-layers contract: the package's imports follow the data's way, and packages meet only at their faces.

Read from the source (an AST walk, nothing is imported), so a wrong import fails here before anyone runs it:
- a unit (a subpackage, or a module at the top such as `errors.py`) imports only units on lower layers; units on one
  layer are independent of each other;
- an import from another package names that package's face (`from ..cache import CacheWriter`), never a module
  inside it, and only names the face lists in `__all__`;
- no private name (`_name`) is imported from another module.
docs/architecture.md quotes LAYERS; the test below checks that the quote is current."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bottleneck"

# Bottom to top. Units on one line are independent: neither imports the other.
LAYERS = (
    ("errors",),
    ("util", "stats"),
    ("images", "backbones", "synthetic"),
    ("cache",),
    ("extract", "heads"),
    ("runs",),
    ("models", "bench"),
    ("cli",),
    ("__main__",),
)


def unit_of(parts: tuple[str, ...]) -> str:
    """The unit a module (its dotted path below the package, e.g. ("cache", "store")) belongs to; "" for the
    package's own __init__ (its version, which every unit may read)."""
    return parts[0] if parts else ""


def module_parts(path: Path, root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(module path, package path) below `root` of a source file."""
    rel = path.relative_to(root).with_suffix("").parts
    if rel[-1] == "__init__":
        return rel[:-1], rel[:-1]
    return rel, rel[:-1]


def face_names(root: Path, package: str) -> set[str]:
    tree = ast.parse((root / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def violations(root: Path, layers=LAYERS) -> list[str]:
    """Every import under `root` (a package folder) that breaks the contract, one line each."""
    layer = {unit: i for i, line in enumerate(layers) for unit in line}
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    found = []
    for path in sorted(root.rglob("*.py")):
        mod, pkg = module_parts(path, root)
        src = unit_of(mod)
        where = f"{path.relative_to(root.parent)}"
        if src and src not in layer:
            found.append(f"{where}: unit {src!r} is on no layer of the contract")
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = base + tuple(node.module.split(".") if node.module else ())
            elif node.module and node.module.split(".")[0] == root.name:
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            line = f"{where}:{node.lineno}"
            if not target:  # `from .. import __version__` (or a sibling module: `from . import cache`)
                names = [a.name for a in node.names]
                siblings = all((root / Path(*pkg) / f"{n}.py").exists() for n in names)
                if pkg and names != ["__version__"] and not siblings:
                    found.append(f"{line}: imports {names} from the package root")
                continue
            dst = unit_of(target)
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{line}: imports the private name {a.name} from {'.'.join(target)}")
            if dst == src:
                continue
            if dst not in layer:
                found.append(f"{line}: imports {'.'.join(target)}, which is on no layer of the contract")
            elif layer[dst] > layer[src]:
                found.append(f"{line}: {src} (layer {layer[src]}) imports {dst} (layer {layer[dst]}), a higher layer")
            elif layer[dst] == layer[src]:
                found.append(f"{line}: {src} imports {dst}; units on one layer are independent")
            if dst in packages:
                if len(target) > 1:
                    found.append(f"{line}: reaches into {'.'.join(target)}; import from the face, {root.name}.{dst}")
                else:
                    missing = sorted({a.name for a in node.names} - face_names(root, dst))
                    if missing:
                        found.append(f"{line}: {dst}'s face does not list {', '.join(missing)} in __all__")
    return found


def test_the_package_keeps_the_contract():
    assert violations(PACKAGE) == []


def test_every_unit_of_the_package_is_on_a_layer():
    units = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    units |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    on_layers = {u for line in LAYERS for u in line}
    assert units == on_layers


def test_every_face_name_exists():
    """A face lists only names it really hands on (a stale __all__ would let an import pass here and fail at run)."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        bound = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        bound |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert face_names(PACKAGE, init.parent.name) <= bound, init


@pytest.mark.parametrize("source, wrong", [
    # a lower package importing a higher one
    ("cache/store.py", "from ..runs import train_head_run\n"),
    # two packages of one layer
    ("heads/model.py", "from ..extract import extract\n"),
    # reaching past a face into a package's module
    ("runs/train.py", "from ..cache.writer import CacheWriter\n"),
    # a name the face does not hand on
    ("runs/train.py", "from ..cache import UndoFile\n"),
    # a private name across modules
    ("runs/train.py", "from .sweep import _final_fit\n"),
    # an absolute import breaks the rule just the same
    ("util/files.py", "from bottleneck.heads import HeadConfig\n"),
])
def test_a_wrong_import_is_caught(tmp_path, source, wrong):
    """The contract can fail: the package copied, one wrong import added, exactly that import reported."""
    import shutil

    copy = tmp_path / "bottleneck"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / source
    target.write_text(target.read_text() + "\n" + wrong)
    found = violations(copy)
    assert len(found) == 1 and found[0].startswith(f"bottleneck/{source}:"), found


def test_architecture_md_quotes_the_layers():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    quoted = re.search(r"```text\n(.*?)```", text, re.S)
    assert quoted, "docs/architecture.md has no ```text block quoting the layers"
    lines = [tuple(u.strip() for u in row.split("|")) for row in quoted.group(1).strip().splitlines()]
    assert tuple(reversed(lines)) == LAYERS
