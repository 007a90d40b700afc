"""Training: `fit(cfg, labels)` trains one tagger, end to end (`finetune`) or on frozen embeddings (`probe`).

The run folder holds `last.pt` (resumable state), `best.pt` (best mean validation macro-F1), `config.json`,
`schema.json`, `metrics.json` (per epoch, per head) and `report.html`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mhtag.backbones import create_backbone
from mhtag.config import TrainConfig, config_from_dict
from mhtag.data import (
    ImageDataset,
    LabelSchema,
    LabelTable,
    Skipped,
    build_transform,
    drop_unreadable,
    forbidden_augmentations,
    read_labels,
)
from mhtag.embed import cached_embeddings, loader_kwargs, resolve_data_config
from mhtag.errors import MhtagError
from mhtag.metrics import head_metrics, mean_macro_f1, tune_thresholds
from mhtag.model import MultiHeadLoss, Tagger, atomic_save, checkpoint_state, tagger_from_checkpoint
from mhtag.report import write_run_report
from mhtag.runtime import DistInfo, autocast, default_device, init_distributed, progress_bar, seed_everything

_logger = logging.getLogger(__name__)


@dataclass
class Run:
    dir: Path
    model: Tagger
    config: TrainConfig
    data_config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=lambda h: h["score"]) if self.history else None


class ArrayDataset(Dataset):
    """Rows of a feature matrix with their targets: the probe trains on these instead of images."""

    def __init__(self, x: np.ndarray, targets: dict[str, np.ndarray]):
        self.x = torch.from_numpy(x)
        self.targets = {k: torch.from_numpy(v) for k, v in targets.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {k: v[i] for k, v in self.targets.items()}


@dataclass
class EpochResult:
    loss: float
    head_losses: dict[str, float]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)


def run_epoch(forward, tagger: Tagger, loader: DataLoader, loss_fn: MultiHeadLoss, device: torch.device,
              optimizer: torch.optim.Optimizer | None = None, scheduler=None, amp: bool = True,
              progress: bool = False, description: str = "") -> EpochResult:
    """One pass over `loader`: a training epoch when an optimizer is given, else evaluation (collects probs)."""
    train = optimizer is not None
    total, seen, head_sums = 0.0, 0, defaultdict(float)
    probs, targets = defaultdict(list), defaultdict(list)
    params = [p for g in optimizer.param_groups for p in g["params"]] if train else []
    with torch.set_grad_enabled(train), progress_bar(description, len(loader), progress) as advance:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = {k: v.to(device, non_blocking=True) for k, v in y.items()}
            with autocast(device, amp):
                logits = forward(x)
            loss, per_head = loss_fn(logits, y)
            if not torch.isfinite(loss):
                bad = [k for k, v in per_head.items() if not torch.isfinite(v)]
                raise MhtagError(f"loss became {loss.item()} (head(s): {', '.join(bad)}); the last good checkpoint "
                                 "is kept. Lower lr or check the inputs")
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                scheduler.step()
            else:
                for k, p in tagger.probabilities(logits).items():
                    probs[k].append(p.cpu().numpy())
                    targets[k].append(y[k].cpu().numpy())
            total += loss.item() * len(x)
            seen += len(x)
            for k, v in per_head.items():
                head_sums[k] += v.item() * len(x)
            advance(1)
    seen = max(seen, 1)
    return EpochResult(total / seen, {k: v / seen for k, v in head_sums.items()},
                       {k: np.concatenate(v) for k, v in probs.items()},
                       {k: np.concatenate(v) for k, v in targets.items()})


def evaluate_outputs(tagger: Tagger, result: EpochResult, tune: bool) -> dict[str, Any]:
    """Per-head metrics; with `tune`, first set the tag thresholds that maximise F1 on these rows."""
    if tune:
        for a in tagger.schema.attributes:
            if a.kind == "multi":
                tagger.thresholds_[a.name] = tune_thresholds(result.probs[a.name], result.targets[a.name]).tolist()
    thresholds = {k: np.asarray(v) for k, v in tagger.thresholds_.items()}
    return head_metrics(tagger.schema, result.probs, result.targets, thresholds)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.05):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prepare_data(cfg: TrainConfig, labels: str | Path, images: str | Path | None) -> tuple[LabelTable, Any, Any]:
    table = drop_unreadable(read_labels(labels, images, cfg.multilabel, cfg.ignore))
    for s in table.skipped[:20]:
        _logger.warning("skipped %s", s)
    if table.skipped:
        _logger.warning("skipped %d row(s) of %s", len(table.skipped), labels)
    train, val = table.split("train"), table.split("val")
    if len(train) == 0:
        raise MhtagError(f"{labels}: no usable training rows")
    if len(val) == 0:  # no validation split given: hold out every 10th training row
        val, train = train.iloc[::10].reset_index(drop=True), train.drop(index=train.index[::10]).reset_index(drop=True)
        _logger.warning("no 'val' rows: holding out %d training rows for validation", len(val))
    return table, train, val


def _optimizer(model: Tagger, cfg: TrainConfig, mode: str) -> torch.optim.Optimizer:
    heads = list(model.heads.parameters()) + list(model.feature_norm.parameters())
    if mode == "probe":
        return torch.optim.AdamW(heads, lr=cfg.probe_lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW([
        {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult},
        {"params": heads, "lr": cfg.lr},
    ], weight_decay=cfg.weight_decay)


def _loaders(model: Tagger, cfg: TrainConfig, mode: str, train_df, val_df, y_train, y_val, data_config,
             device: torch.device, dist: DistInfo, progress: bool) -> tuple[DataLoader, DataLoader]:
    if mode == "probe":
        def embed(df) -> np.ndarray:
            return cached_embeddings(model.backbone, df["file"].tolist(), data_config, cfg.batch_size, device,
                                     cfg.num_workers, progress=progress)

        train_ds, val_ds = ArrayDataset(embed(train_df), y_train), ArrayDataset(embed(val_df), y_val)
        batch, kw = 256, {}
    else:
        forbid = forbidden_augmentations(model.schema.names, cfg.aug_forbid)
        train_tf = build_transform(data_config, train=cfg.augment, forbid=forbid)
        train_ds = ImageDataset(train_df["file"].tolist(), train_tf, y_train)
        val_ds = ImageDataset(val_df["file"].tolist(), build_transform(data_config), y_val)
        batch, kw = cfg.batch_size, loader_kwargs(device, cfg.num_workers)
    sampler = DistributedSampler(train_ds, seed=cfg.seed) if dist.enabled else None
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_ds) > batch, generator=generator, **kw)
    return train_loader, DataLoader(val_ds, batch_size=batch * 2, **kw)


def fit(cfg: TrainConfig, labels: str | Path, images: str | Path | None = None, out: str | Path = "runs/latest",
        resume: bool = False, progress: bool = False) -> Run:
    """Train a tagger on the labels CSV; returns the run with the best model loaded."""
    out = Path(out)
    last_path = out / "last.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise MhtagError(f"nothing to resume: {last_path} does not exist")
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        cfg = config_from_dict(state["config"])
        _logger.info("resuming %s from epoch %d", out, state["epoch"] + 1)
    elif (out / "best.pt").exists():
        raise MhtagError(f"{out} already holds a trained run; pass --resume to continue it or choose another --out")
    dist = init_distributed()
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else default_device()
    mode = cfg.resolved_mode(device.type == "cuda")
    if mode == "probe" and dist.enabled:
        raise MhtagError("probe mode trains in one process in seconds; run it without torchrun")
    seed_everything(cfg.seed)

    table, train_df, val_df = prepare_data(cfg, labels, images)
    if state is not None:
        schema = LabelSchema.from_dict(state["schema"])
        dropped = state.get("dropped", {})
    else:
        schema, dropped = LabelSchema.fit(train_df, table.attributes, table.multilabel, cfg.min_count)
    for name, why in dropped.items():
        _logger.warning("attribute %r is not a head: %s", name, why)
    if not schema.attributes:
        raise MhtagError(f"{labels}: no attribute has two or more classes to learn ({'; '.join(dropped.values())})")
    backbone = create_backbone(cfg.backbone, cfg.pretrained and state is None, cfg.checkpoint)
    data_config = resolve_data_config(backbone, cfg.image_size)
    backbone.data_config = data_config
    model = Tagger(backbone, schema, cfg.head, cfg.head_hidden, cfg.dropout)
    if mode == "probe":
        model.backbone.requires_grad_(False)
    (y_train, _), (y_val, _) = schema.encode(train_df), schema.encode(val_df)
    loss_fn = MultiHeadLoss(schema, cfg.head_weights, cfg.class_weights, cfg.class_weight_cap,
                            cfg.label_smoothing, n_train=len(train_df)).to(device)

    epochs = cfg.probe_epochs if mode == "probe" else cfg.epochs
    train_loader, val_loader = _loaders(model, cfg, mode, train_df, val_df, y_train, y_val, data_config,
                                        device, dist, progress)
    model.to(device)
    optimizer = _optimizer(model, cfg, mode)
    scheduler = cosine_with_warmup(optimizer, epochs * len(train_loader))
    history: list[dict[str, Any]] = []
    start_epoch, best_score = 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        model.thresholds_ = state["thresholds"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, start_epoch = state["history"], state["epoch"] + 1
        best_score = max((h["score"] for h in history), default=-1.0)

    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                                        else None)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "resolved_mode": mode}, indent=2))
        (out / "schema.json").write_text(json.dumps(schema.to_dict(), indent=2))
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    extra = {"dropped": dropped, "mode": mode}
    interrupted = False
    show = progress and dist.is_main and mode == "finetune"
    try:
        for epoch in range(start_epoch, epochs):
            if dist.enabled:
                train_loader.sampler.set_epoch(epoch)
            t0 = time.monotonic()
            net.train()
            tr = run_epoch(_forward(net, mode), model, train_loader, loss_fn, device, optimizer, scheduler, cfg.amp,
                           show, f"epoch {epoch + 1}/{epochs}")
            if dist.is_main:  # validation, checkpoints and logs happen once, on rank 0
                model.eval()
                va = run_epoch(_forward(model, mode), model, val_loader, loss_fn, device, amp=cfg.amp,
                               progress=show, description="validating")
                heads = evaluate_outputs(model, va, tune=True)
                score = mean_macro_f1(heads)
                history.append({"epoch": epoch, "train_loss": tr.loss, "train_head_losses": tr.head_losses,
                                "val_loss": va.loss, "val_head_losses": va.head_losses, "heads": heads,
                                "score": score, "seconds": time.monotonic() - t0})
                _log_epoch(history[-1], epochs, mode)
                if score > best_score:
                    best_score = score
                    atomic_save(checkpoint_state(model, cfg.to_dict(), data_config, {**extra, "epoch": epoch}),
                                out / "best.pt")
                atomic_save({**checkpoint_state(model, cfg.to_dict(), data_config, extra), "epoch": epoch,
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": torch.get_rng_state(), "history": history}, last_path)
                _write_json(out / "metrics.json", {"mode": mode, "epochs": history})
            if _rank0_says(time.monotonic() > deadline, dist):
                _logger.warning("stopping after epoch %d: max_minutes=%s reached", epoch + 1, cfg.max_minutes)
                break
    except KeyboardInterrupt:
        interrupted = True
        _logger.warning("interrupted; the last good checkpoint in %s is kept (continue with --resume)", out)
    if not (out / "best.pt").exists():
        raise MhtagError("training stopped before the first epoch finished; nothing was saved")
    best = tagger_from_checkpoint(torch.load(out / "best.pt", map_location="cpu", weights_only=False))
    run = Run(out, best, cfg, data_config, history, table.skipped, dropped, interrupted)
    if dist.is_main and not interrupted:
        best.to(device)
        va = run_epoch(_forward(best, mode), best, val_loader, loss_fn, device, amp=cfg.amp)
        write_run_report(out, history, evaluate_outputs(best, va, tune=False), va.probs, va.targets,
                         best.schema, title=f"mhtag run {out.name} ({mode}, {cfg.backbone})")
        best.cpu()
    return run


def _forward(model: torch.nn.Module, mode: str):
    """The probe trains and validates on cached embeddings, so it calls the heads alone."""
    return model.forward_heads if mode == "probe" else model


def _rank0_says(decision: bool, dist: DistInfo) -> bool:
    """Every process follows rank 0 (its clock decides when max_minutes is up); also the epoch barrier."""
    if not dist.enabled:
        return decision
    flag = [decision]
    torch.distributed.broadcast_object_list(flag, src=0)
    return bool(flag[0])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _log_epoch(h: dict[str, Any], epochs: int, mode: str) -> None:
    every = 1 if mode == "finetune" else max(1, epochs // 6)
    if h["epoch"] % every == 0 or h["epoch"] == epochs - 1:
        accs = ", ".join(f"{k} {m.get('accuracy', 0):.3f}" for k, m in h["heads"].items())
        _logger.info("epoch %d/%d train %.4f val %.4f macro-F1 %.3f | %s", h["epoch"] + 1, epochs,
                     h["train_loss"], h["val_loss"], h["score"], accs)
