"""Imports flow one way (docs/architecture.md): each package may import only the layers listed here."""
import ast
from pathlib import Path

import homefeed

ROOT = Path(homefeed.__file__).parent
ALLOWED = {
    "config": set(),
    "data": {"config"},
    "evaluate": {"config", "data"},
    "world": {"config", "data"},
    "recall": {"config", "data", "evaluate", "world"},
    "rank": {"config", "data", "evaluate", "world"},
    "mechanism": {"config", "data", "evaluate", "world"},
    "serve": {"config", "data", "evaluate", "world", "recall", "rank", "mechanism"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out |= {n.split(".")[1] for n in names if n.startswith("homefeed.") and n.count(".") >= 1}
    return out


def test_imports_flow_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        layer = layer_of(path)
        if layer not in ALLOWED:  # cli, cli_support, demo, distributed sit on top
            continue
        for target in imported_layers(path) - ALLOWED[layer] - {layer}:
            bad.append(f"{path.relative_to(ROOT)} imports homefeed.{target}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_nothing_imports_serve_cli_or_distributed():
    for path in ROOT.rglob("*.py"):
        layer = layer_of(path)
        if layer in ("serve", "cli", "cli_support", "demo", "distributed"):
            continue
        assert not imported_layers(path) & {"serve", "cli", "cli_support", "distributed"}, path
