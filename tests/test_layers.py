"""Data flows one way: a module imports only modules of layers below its own (or earlier in its own package's
order); the CLI and the server are the top layers, so nothing below imports them. Every import form counts:
`from mhtag.x import y`, `from mhtag import x`, `import mhtag.x`, and imports inside functions."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mhtag"

# Packages from the bottom up; inside a package, its modules from the bottom up.
LAYERS = [
    ("core", ["errors", "io", "storage", "progress", "config", "runtime"]),
    ("results", []),
    ("data", ["images", "schema", "labels", "transforms", "datasets", "synthetic", "shifts"]),
    ("models", ["colour", "backbones", "tagger", "ensemble", "loss", "checkpoint", "text"]),
    ("report", ["text", "html", "sheets", "audit"]),
    ("inference", ["store", "encoder", "fusion", "words"]),
    ("training", ["metrics", "calibration", "optim", "batches", "phases", "distill", "fit", "evaluate", "ensemble",
                  "crossfit", "captions"]),
    ("index", ["guard", "columns", "filters", "query", "meta", "labels", "vectors", "vectorstore", "store", "sql",
               "engine", "memory", "lancedb_engine", "info", "history", "neighbours", "rows", "zeroshot", "predict",
               "refresh", "raydata", "build", "uploads", "synthetic", "ann", "search", "export", "robustness"]),
    ("audit", ["health", "rules", "labels"]),
    ("catalogue", ["edits", "retrain", "review"]),
    ("server", ["batching", "service", "files", "api", "app"]),
    ("cli", ["app", "demo", "inspect", "train", "evaluate", "ensemble", "index", "predict", "search", "export",
             "labels", "audit", "serve", "backbones", "cache"]),
    ("__main__", []),
]
RANK = {}
for p, (package, modules) in enumerate(LAYERS):
    RANK[package] = (p, -1)
    for m, module in enumerate(modules):
        RANK[f"{package}.{module}"] = (p, m)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(tree: ast.AST) -> list[str]:
    """Every mhtag module an import statement names, as a dotted path under mhtag."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name[6:] for a in node.names if a.name.startswith("mhtag.")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mhtag":
                out += [a.name for a in node.names]
            elif node.module.startswith("mhtag."):
                out.append(node.module[6:])
    return out


def _rank(name: str) -> tuple[int, int]:
    parts = name.split(".")
    return RANK.get(".".join(parts[:2])) or RANK[parts[0]]


def test_every_module_is_placed_in_a_layer():
    names = {_module_name(p) for p in PKG.rglob("*.py")} - {""}
    unplaced = {n for n in names if ".".join(n.split(".")[:2]) not in RANK and n not in RANK}
    assert not unplaced, f"add these to LAYERS: {sorted(unplaced)}"


def test_imports_only_flow_downwards():
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        if not name:
            continue  # mhtag/__init__.py: the public API re-exports lazily from everywhere
        own = _rank(name)
        for target in _targets(ast.parse(path.read_text())):
            there = _rank(target)
            package_init = path.name == "__init__.py" and target.split(".")[0] == name
            assert package_init or there < own, f"{name} imports {target}"


def test_the_checker_sees_every_import_form():
    tree = ast.parse("import mhtag.cli\nfrom mhtag import server\nfrom mhtag.index.search import x\n"
                     "def f():\n    from mhtag.report import text\n")
    assert _targets(tree) == ["cli", "server", "index.search", "report"]
