"""Checkpoints: the weights with everything needed to rebuild the model (config, schema, preprocessing).

A checkpoint is loaded with `torch.load(weights_only=True)`: it may hold tensors, numbers, strings, lists and
dicts only, so a model folder from elsewhere cannot run code when it is loaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_path
from mhtag.data.schema import LabelSchema
from mhtag.models.backbones import create_backbone
from mhtag.models.ensemble import TaggerEnsemble
from mhtag.models.tagger import Tagger

CHECKPOINT_FORMAT = 1


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save through a temporary file and a rename: a checkpoint is never half-written."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def checkpoint_state(model: Tagger, config: dict[str, Any], data_config: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **_calibration_state(model, config, data_config),
        "model": model.state_dict(),
        **(extra or {}),
    }


def ensemble_state(model: TaggerEnsemble, members: list[dict[str, Any]], config: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The members' own checkpoints, their feature scales and the ensemble's calibration."""
    return {
        **_calibration_state(model, config, model.backbone.data_config),
        "members": members,
        "scales": model.backbone.scales,
        **(extra or {}),
    }


def _calibration_state(model: Tagger, config: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "backbone": model.backbone.name,
        "config": config,
        "data_config": data_config,
        "backbone_options": model.backbone.options,
        "schema": model.schema.to_dict(),
        "thresholds": model.thresholds_,
        "temperatures": model.temperatures_,
        "platt": {k: [list(a), list(b)] for k, (a, b) in model.platt_.items()},
    }


def tagger_from_checkpoint(state: dict[str, Any]) -> Tagger:
    """Rebuild the exact model from a checkpoint; no weights are downloaded (they are all in `state`)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise MhtagError(f"checkpoint format {state.get('format')} is not supported (expected {CHECKPOINT_FORMAT})")
    if "members" in state:
        model: Tagger = TaggerEnsemble([tagger_from_checkpoint(m) for m in state["members"]], state["scales"])
    else:
        cfg = state["config"]
        data_config, options = backbone_settings(state)
        backbone = create_backbone(state["backbone"], pretrained=False, image_size=data_config["input_size"],
                                   **options)
        if backbone.data_config != data_config:
            raise MhtagError(f"checkpoint preprocessing {data_config} differs from backbone {state['backbone']}'s "
                             f"{backbone.data_config}")
        if cfg.get("head", "linear") != "linear":
            raise MhtagError(f"this model has {cfg['head']} heads, which this version of mhtag no longer builds")
        model = Tagger(backbone, LabelSchema.from_dict(state["schema"]), cfg["dropout"])
        model.load_state_dict(state["model"])
    model.thresholds_ = {k: list(v) for k, v in state["thresholds"].items()}
    model.temperatures_ = {k: float(v) for k, v in state.get("temperatures", {}).items()}
    model.platt_ = {k: ([float(x) for x in a], [float(x) for x in b]) for k, (a, b) in state.get("platt", {}).items()}
    return model.eval()


_OPTION_KEYS = ("tta_flip", "colour_bins")  # before `backbone_options`, checkpoints kept them in `data_config`


def backbone_settings(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(preprocessing, backbone options) of a checkpoint, also of one written before the options had their own
    key."""
    data_config = {k: v for k, v in state["data_config"].items() if k not in _OPTION_KEYS}
    legacy = {k: state["data_config"][k] for k in _OPTION_KEYS if state["data_config"].get(k) is not None}
    options = {"tta_flip": False, "colour_bins": 0} | legacy | state.get("backbone_options", {})
    return data_config, {"tta_flip": bool(options["tta_flip"]), "colour_bins": int(options["colour_bins"] or 0)}


def with_options(state: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The checkpoint `state` with backbone options changed (e.g. the test-time flip switched on)."""
    data_config, current = backbone_settings(state)
    return {**state, "data_config": data_config, "backbone_options": current | options}


def checkpoint_file(path: str | Path, name: str = "best.pt") -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def load_checkpoint(path: str | Path, name: str = "best.pt") -> dict[str, Any]:
    """Read a checkpoint (a run folder's `name`, or a file) without running any code it may carry."""
    path = checkpoint_file(path, name)
    if not path.is_file():
        raise MhtagError(f"no model checkpoint at {path}; train one with `mhtag train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MhtagError(f"{path}: refused to load; the checkpoint holds objects other than tensors, numbers, "
                         f"strings, lists and dicts ({str(exc).splitlines()[0][:200]})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise MhtagError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(state, dict) or "format" not in state:
        raise MhtagError(f"{path}: not an mhtag checkpoint")
    return state
