"""mhtag: multi-head image tagging and attribute search.

The public API, for notebooks and programs (imported lazily, so `import mhtag` is cheap):

    import mhtag
    cfg = mhtag.load_config("demo")
    run = mhtag.fit(cfg, "demo/labels.csv", out="runs/demo")
    mhtag.index_images("demo", "indexes/demo", model="runs/demo", labels="demo/labels.csv", multilabel=["marks"])
    mhtag.search("indexes/demo", {"colour": ["red"]}, limit=5)
    mhtag.predict(["demo/images/00001.png"], "indexes/demo")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MhtagError": "mhtag.core.errors",
    "ImageError": "mhtag.core.errors",
    "TrainConfig": "mhtag.core.config",
    "load_config": "mhtag.core.config",
    "list_presets": "mhtag.core.config",
    "setup": "mhtag.core.runtime",
    "LabelSchema": "mhtag.data.schema",
    "read_labels": "mhtag.data.labels",
    "load_image": "mhtag.data.images",
    "make_demo_data": "mhtag.data.synthetic",
    "create_backbone": "mhtag.models.backbones",
    "list_backbones": "mhtag.models.backbones",
    "register_backbone": "mhtag.models.backbones",
    "Tagger": "mhtag.models.tagger",
    "fit": "mhtag.training.fit",
    "evaluate": "mhtag.training.evaluate",
    "build_ensemble": "mhtag.training.ensemble",
    "load_encoder": "mhtag.inference.encoder",
    "store_usage": "mhtag.inference.store",
    "prune_store": "mhtag.inference.store",
    "stored_features": "mhtag.inference.encoder",
    "index_images": "mhtag.index.build",
    "IndexOptions": "mhtag.index.build",
    "Query": "mhtag.index.query",
    "export_index": "mhtag.index.export",
    "Predictor": "mhtag.index.predict",
    "predict": "mhtag.index.predict",
    "search": "mhtag.index.search",
    "inspect_labels": "mhtag.audit.health",
    "audit_labels": "mhtag.audit.labels",
    "AuditOptions": "mhtag.audit.labels",
    "create_app": "mhtag.server.app",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mhtag' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
