"""Imports flow one way (docs/architecture.md): each package may import only the layers listed here."""
import ast
from pathlib import Path

import homefeed

ROOT = Path(homefeed.__file__).parent
BASE = {"config", "threads"}  # every layer may read settings and use the torch thread helper
STAGE = BASE | {"data", "evaluate"}  # recall, rank and mechanism: never each other, never the synthetic world
ALLOWED = {
    "config": set(),
    "threads": set(),
    "data": BASE,
    "evaluate": BASE | {"data"},
    "world": BASE | {"data"},
    "recall": STAGE,
    "rank": STAGE,
    "mechanism": STAGE,
    "bundle": STAGE | {"recall", "rank", "mechanism"},  # the build loop composes the stages' parts
    "serve": STAGE | {"recall", "rank", "mechanism", "bundle"},  # loads parts and answers; fits nothing
}
OFFLINE_NAMES = ("fit_channels", "build_all", "fit_preset", "train", "build_bundle", "export_torchscript", "quantize_int8",
                 "fit_standard_categories", "fit_image_groups", "estimate_blocking_periods")


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
        if layer not in ALLOWED:  # cli, cli_support, cli_evaluate, demo, distributed, experiment sit on top
            continue
        for target in imported_layers(path) - ALLOWED[layer] - {layer}:
            bad.append(f"{path.relative_to(ROOT)} imports homefeed.{target}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_nothing_imports_serve_cli_or_distributed():
    for path in ROOT.rglob("*.py"):
        layer = layer_of(path)
        if layer in ("serve", "cli", "cli_support", "cli_evaluate", "demo", "distributed", "experiment"):
            continue
        assert not imported_layers(path) & {"serve", "cli", "cli_support", "cli_evaluate", "distributed", "experiment"}, path


def test_only_the_command_line_uses_the_top_layers():
    """distributed and experiment are entry points: only cli/demo (and themselves) import them."""
    for path in ROOT.rglob("*.py"):
        layer = layer_of(path)
        for top in ("distributed", "experiment"):
            if layer not in (top, "cli", "cli_support", "cli_evaluate", "demo"):
                assert top not in imported_layers(path), f"{path.relative_to(ROOT)} imports homefeed.{top}"


def test_world_is_imported_by_no_product_stage():
    for path in ROOT.rglob("*.py"):
        if layer_of(path) in ("recall", "rank", "mechanism", "serve", "bundle", "data", "evaluate"):
            assert "world" not in imported_layers(path), f"{path.relative_to(ROOT)} imports homefeed.world"


def test_serve_only_loads_parts_and_answers():
    """Offline work (fitting, training, building) lives in its stage or the bundle, never in serve/."""
    bad = []
    for path in (ROOT / "serve").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("homefeed."):
                bad += [f"{path.name} imports {a.name}" for a in node.names if a.name in OFFLINE_NAMES]
    assert not bad, "offline code used in serve/:\n" + "\n".join(bad)
