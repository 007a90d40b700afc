"""Building an ensemble from trained runs: members that share schema and preprocessing, their features put on
one scale, the mean of their calibrated probabilities recalibrated on the validation split, all in one
checkpoint that every command loads like a single run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_write_json
from mhtag.data.schema import LabelSchema
from mhtag.data.transforms import mirroring_forbidden
from mhtag.inference.encoder import stored_features
from mhtag.models.checkpoint import (
    ensemble_state,
    load_checkpoint,
    save_checkpoint,
    tagger_from_checkpoint,
    with_options,
)
from mhtag.models.ensemble import TaggerEnsemble, check_members, feature_scales
from mhtag.models.tagger import Tagger, feature_probabilities
from mhtag.training.calibration import calibrate, tune_tag_thresholds
from mhtag.training.evaluate import split_rows
from mhtag.training.metrics import calibration_errors, head_metrics


def _metrics(model: Tagger, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, Any]:
    return head_metrics(model.schema, probs, targets, {k: np.asarray(v) for k, v in model.thresholds_.items()})


def _check_out(out: Path) -> None:
    """Never overwrite a trained run: `out` is new, empty or an earlier ensemble."""
    if (out / "last.pt").exists() or ((out / "best.pt").exists() and "members" not in load_checkpoint(out)):
        raise MhtagError(f"{out}: holds a trained run, which an ensemble would overwrite; choose another --out")


def _with_tta_flip(state: dict[str, Any], name: str, on: bool) -> dict[str, Any]:
    """The member's checkpoint with its test-time flip switched `on` (or off); refused where a head's labels
    change under a mirror, as training refuses it."""
    aug_forbid = state["config"].get("aug_forbid") or {}
    if on and mirroring_forbidden(LabelSchema.from_dict(state["schema"]).names, aug_forbid):
        raise MhtagError(f"{name}: a head forbids horizontal flips (a view/side head or aug_forbid), so the "
                         "test-time flip cannot be on")
    return with_options(state, tta_flip=on)


def build_ensemble(runs: list[str | Path], labels: str | Path, images: str | Path | None = None,
                   out: str | Path = "runs/ensemble", batch_size: int = 128, progress: bool = False,
                   tta_flip: bool | None = None) -> dict[str, Any]:
    """Write `out/best.pt`, the ensemble of `runs`, calibrated on the labels' validation split. Returns
    `{"out", "members", "val": {"ensemble": heads, "<run>": heads, ...}, "ece_before_calibration"}` with per-head
    validation metrics of the ensemble and of each member (members as they were calibrated). `tta_flip` switches
    every member's test-time flip on or off (None keeps what they were trained with); the ensemble is calibrated
    with it and keeps it."""
    out = Path(out)
    _check_out(out)
    names = [str(r) for r in runs]
    states = [load_checkpoint(r) for r in runs]
    if tta_flip is not None:
        states = [_with_tta_flip(s, name, tta_flip) for s, name in zip(states, names, strict=True)]
    members = [tagger_from_checkpoint(s) for s in states]
    check_members(members, names)
    config = {**states[0]["config"], "mode": "ensemble", "members": names,
              "tta_flip": members[0].backbone.tta_flip}
    rows = split_rows(members[0], config, labels, images, "val")
    features = [stored_features(m.backbone, rows.files, batch_size=batch_size, progress=progress) for m in members]
    scales = feature_scales(features)
    model = TaggerEnsemble(members, scales).eval()
    joined = np.concatenate([f * s for f, s in zip(features, scales, strict=True)], axis=1)
    raw = feature_probabilities(model, joined, calibrated=False)
    tune_tag_thresholds(model, raw, rows.targets)
    calibrated = calibrate(model, raw, rows.targets)
    before = calibration_errors(model.schema, raw, rows.targets)
    val = {"ensemble": _metrics(model, calibrated, rows.targets)}
    for name, member, f in zip(names, members, features, strict=True):
        val[name] = _metrics(member, feature_probabilities(member, f, calibrated=True), rows.targets)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**ensemble_state(model, states, config), "ece_before_calibration": before}, out / "best.pt")
    result = {"out": str(out), "members": names, "val_rows": len(rows.files), "val": val,
              "ece_before_calibration": before}
    atomic_write_json(out / "metrics.json", {"mode": "ensemble", **result})
    return result
