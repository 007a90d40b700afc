"""Data flows one way: a module imports only modules above it in LAYERS, and nothing imports the CLI."""

import ast
from pathlib import Path

LAYERS = ["errors", "config", "runtime", "data", "synthetic", "health", "backbones", "model", "metrics", "embed",
          "report", "train", "evaluate", "store", "predict", "index", "search", "cli"]


def test_imports_only_flow_downwards():
    pkg = Path(__file__).resolve().parents[1] / "mhtag"
    modules = sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__")
    assert set(modules) <= set(LAYERS), f"add new modules to LAYERS: {set(modules) - set(LAYERS)}"
    for name in modules:
        tree = ast.parse((pkg / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mhtag."):
                target = node.module.split(".")[1]
                assert LAYERS.index(target) < LAYERS.index(name), f"{name} imports {target}"
