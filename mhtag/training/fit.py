"""Training: `fit(cfg, labels)` trains one tagger, end to end (`finetune`) or on frozen embeddings (`probe`).

The run folder holds `last.pt` (resumable state), `best.pt` (best mean validation macro-F1), `config.json`,
`schema.json`, `metrics.json` (per epoch, per head) and `report.html`.

A fine-tune is LP-FT: the probe trains first (in `probe/`, seconds on cached embeddings), then the whole network
trains from the probe's heads (`lp_ft`), so random heads never push their gradients into the pretrained features.
The probe is also the baseline every fine-tune is compared with, per head, at its end; with `keep: best-of` a
fine-tune that ends below it on validation ships the probe instead.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhtag.core.config import RESUMABLE_KEYS, TrainConfig, check_head_keys, config_from_dict, saved_config
from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_path, atomic_write_json, atomic_write_text
from mhtag.core.progress import progress_bar
from mhtag.core.runtime import DistInfo, autocast, default_device, init_distributed, seed_everything
from mhtag.data.labels import FILE, LabelTable, Skipped
from mhtag.data.schema import LabelSchema
from mhtag.data.transforms import mirroring_forbidden
from mhtag.inference.encoder import memory_format
from mhtag.models.backbones import create_backbone
from mhtag.models.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint, tagger_from_checkpoint
from mhtag.models.loss import MultiHeadLoss
from mhtag.models.tagger import Tagger
from mhtag.report.html import write_run_report
from mhtag.training.batches import prepare_data
from mhtag.training.calibration import calibrate, tune_tag_thresholds
from mhtag.training.distill import teacher_targets
from mhtag.training.metrics import calibration_errors, head_metrics, mean_macro_f1, reliability_curves
from mhtag.training.optim import cosine_with_warmup
from mhtag.training.phases import FINETUNE, PHASES, PROBE, Phase

_logger = logging.getLogger(__name__)
PROBE_DIR = "probe"  # a fine-tune's phase one, inside its run folder
# last.pt and metrics.json are written at most this often (and after the last epoch, and on any stop): the probe's
# epochs take half a second, and writing the whole model after each one cost a sixth of its training time.
LAST_EVERY_S = 30.0
FINITE_CHECK_EVERY = 16  # steps between reading the summed loss back to check it is finite
Data = tuple[LabelTable, Any, Any]  # prepare_data's labels table, train rows, val rows


@dataclass
class HeadComparison:
    """One head's best validation macro-F1 under the probe and under the fine-tune."""

    name: str
    probe: float
    finetune: float


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
    report: Path | None = None  # report.html, when the run finished
    kept: str = ""  # which model best.pt holds: "probe" or "finetune"
    comparison: list[HeadComparison] = field(default_factory=list)  # fine-tunes: per head, vs the probe
    val_metrics: dict[str, Any] | None = None  # the shipped model's, calibrated (`ece`; `ece_uncalibrated` before)

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.history, key=lambda h: h["score"]) if self.history else None


@dataclass
class EpochResult:
    loss: float
    head_losses: dict[str, float]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)


class _Totals:
    """Running, sample-weighted sums of the total and per-head losses, kept on the loss's device: reading a GPU's
    loss back every step (`.item()`, `isfinite`) would make the CPU wait for it before queueing the next step."""

    def __init__(self):
        self.total: torch.Tensor | float = 0.0
        self.heads: dict[str, torch.Tensor | float] = defaultdict(float)
        self.seen = 0

    def add(self, loss: torch.Tensor, per_head: dict[str, torch.Tensor], n: int) -> None:
        self.total = self.total + loss.detach().float() * n
        self.seen += n
        for k, v in per_head.items():
            self.heads[k] = self.heads[k] + v.detach().float() * n

    def check_finite(self) -> None:
        """A non-finite step loss leaves its sum non-finite, so checking the sums now and then (one read back)
        catches every diverged step, naming its heads."""
        if self.seen and not math.isfinite(float(self.total)):
            bad = [k for k, v in self.heads.items() if not math.isfinite(float(v))]
            raise NonFiniteLoss(f"loss became {float(self.total) / self.seen} (head(s): {', '.join(bad)})")

    def result(self, **kw) -> EpochResult:
        self.check_finite()
        seen = max(self.seen, 1)
        return EpochResult(float(self.total) / seen, {k: float(v) / seen for k, v in self.heads.items()}, **kw)


def _loss(forward: Callable, loss_fn: MultiHeadLoss, x: torch.Tensor, y: dict[str, torch.Tensor],
          device: torch.device, amp: bool):
    x = x.to(device, non_blocking=True, memory_format=memory_format(device) if x.dim() == 4 else torch.preserve_format)
    y = {k: v.to(device, non_blocking=True) for k, v in y.items()}
    with autocast(device, amp):
        logits = forward(x)
    loss, per_head = loss_fn(logits, y)
    return logits, y, loss, per_head


class NonFiniteLoss(MhtagError):
    """Training diverged; the message names the head."""


def train_one_epoch(forward: Callable, loader: Iterable, loss_fn: MultiHeadLoss, device: torch.device,
                    optimizer: torch.optim.Optimizer, scheduler, amp: bool = True, progress: bool = False,
                    description: str = "", steps: int | None = None) -> EpochResult:
    totals = _Totals()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with progress_bar(description, steps, progress) as advance:
        for step, (x, y) in enumerate(loader):
            _, _, loss, per_head = _loss(forward, loss_fn, x, y, device, amp)
            totals.add(loss, per_head, len(x))
            if step % FINITE_CHECK_EVERY == 0:  # the first step's before its update: a loss non-finite from the
                totals.check_finite()           # start never reaches the weights
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            scheduler.step()
            advance(1)
    return totals.result()


@torch.no_grad()
def validate(forward: Callable, tagger: Tagger, loader: Iterable, loss_fn: MultiHeadLoss, device: torch.device,
             amp: bool = True, progress: bool = False, steps: int | None = None) -> EpochResult:
    totals, probs, targets = _Totals(), defaultdict(list), defaultdict(list)
    with progress_bar("validating", steps, progress) as advance:
        for x, y in loader:
            logits, y, loss, per_head = _loss(forward, loss_fn, x, y, device, amp)
            for k, p in tagger.probabilities(logits).items():
                probs[k].append(p.cpu().numpy())
                targets[k].append(y[k].cpu().numpy())
            totals.add(loss, per_head, len(x))
            advance(1)
    return totals.result(probs={k: np.concatenate(v) for k, v in probs.items()},
                         targets={k: np.concatenate(v) for k, v in targets.items()})


def evaluate_outputs(tagger: Tagger, result: EpochResult, tune: bool) -> dict[str, Any]:
    """Per-head metrics; with `tune`, first set the tag thresholds that maximise F1 on these rows."""
    if tune:
        tune_tag_thresholds(tagger, result.probs, result.targets)
    thresholds = {k: np.asarray(v) for k, v in tagger.thresholds_.items()}
    return head_metrics(tagger.schema, result.probs, result.targets, thresholds)


# ---------------------------------------------------------------- resuming


def resumed_config(out: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """The saved config of the run in `out`, with schedule `overrides` applied (RESUMABLE_KEYS); returns it and
    {key: (old, new)} for what changed. Anything else (architecture, schema, preprocessing) stays as saved."""
    saved = _saved_config(Path(out))
    fixed = {k: v for k, v in overrides.items() if k not in RESUMABLE_KEYS and v != getattr(saved, k, v)}
    if fixed:
        raise MhtagError(f"a resumed run keeps its saved {', '.join(sorted(fixed))}; only "
                         f"{', '.join(RESUMABLE_KEYS)} can change on --resume (or train a new run with another --out)")
    changes = {k: (getattr(saved, k), v) for k, v in overrides.items()
               if k in RESUMABLE_KEYS and getattr(saved, k) != v}
    return config_from_dict({k: new for k, (_, new) in changes.items()}, saved), changes


def _saved_config(out: Path) -> TrainConfig:
    if not (out / "last.pt").exists() and (out / PROBE_DIR).is_dir() and (out / "config.json").is_file():
        saved = json.loads((out / "config.json").read_text())  # a fine-tune stopped in its probe phase
        saved.pop("resolved_mode", None)
        return saved_config(saved)
    return saved_config(load_checkpoint(out, "last.pt")["config"])


def _resume_state(out: Path, resume: bool) -> dict[str, Any] | None:
    if not resume:
        if (out / "best.pt").exists() or (out / PROBE_DIR / "best.pt").exists():
            raise MhtagError(f"{out} already holds a trained run; pass --resume to continue it or choose another "
                             "--out")
        return None
    if not (out / "last.pt").exists() and (out / PROBE_DIR).is_dir():
        return None  # stopped during the probe phase: the fine-tune starts fresh after it
    state = load_checkpoint(out, "last.pt")
    _logger.info("resuming %s after epoch %d", out, state["epoch"] + 1)
    return state


# ---------------------------------------------------------------- the loop


def fit(cfg: TrainConfig, labels: str | Path | LabelTable, images: str | Path | None = None,
        out: str | Path = "runs/latest", resume: bool = False, progress: bool = False) -> Run:
    """Train a tagger on a labels CSV (or on a table of checked rows, such as a catalogue's known labels); returns
    the run with the best model loaded.

    With `resume`, training continues from `out/last.pt`: the model (backbone included) comes from the checkpoint
    before anything is embedded, and `cfg` should come from `resumed_config`."""
    out = Path(out)
    if cfg.teacher and Path(cfg.teacher).resolve() == out.resolve():
        raise MhtagError(f"{out}: a run cannot be its own teacher; pass another run as --teacher")
    state = _resume_state(out, resume)
    dist = init_distributed()
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else default_device()
    phase = PHASES[state["mode"] if state else cfg.resolved_mode(device.type == "cuda")]
    data = prepare_data(cfg, labels, images, progress and dist.is_main)  # decodes each image once for every phase
    check_head_keys(cfg, data[0].attributes)  # before anything is written
    if phase is PROBE:
        if dist.enabled:
            raise MhtagError("probe mode trains in one process in seconds; run it without torchrun")
        return _train(cfg, labels, data, out, state, dist, device, PROBE, progress)
    if dist.is_main:
        atomic_write_text(out / "config.json", json.dumps({**cfg.to_dict(), "resolved_mode": phase.name}, indent=2))
    probe = _probe_phase(cfg, labels, data, out, resume, dist, device, progress)
    if probe.interrupted:
        return probe
    start = probe.model if cfg.lp_ft and state is None else None
    run = _train(cfg, labels, data, out, state, dist, device, FINETUNE, progress, start)
    if not run.interrupted:
        _keep_better(run, probe, cfg, dist)
    return run


def _probe_phase(cfg: TrainConfig, labels, data: Data, out: Path, resume: bool, dist: DistInfo, device: torch.device,
                 progress: bool) -> Run:
    """The fine-tune's phase one, run once in `out/probe` (by rank 0; the other ranks wait for it)."""
    folder = out / PROBE_DIR
    probe_cfg = config_from_dict({"mode": PROBE.name, "report": False, "patience": None}, cfg)  # epochs are cheap
    if dist.is_main and not _finished(folder):
        state = load_checkpoint(folder, "last.pt") if resume and (folder / "last.pt").exists() else None
        _logger.info("phase 1/2: heads on frozen features (%d epochs)", cfg.probe_epochs)
        run = _train(probe_cfg, labels, data, folder, state, DistInfo(), device, PROBE, progress)
        if run.interrupted:
            return replace(run, dir=out)
    _rank0_value(None, dist)  # a barrier
    state = load_checkpoint(folder)
    history = json.loads((folder / "metrics.json").read_text())["epochs"]
    return Run(folder, tagger_from_checkpoint(state), probe_cfg, state["data_config"], history, kept=PROBE.name,
               val_metrics=state.get("val_metrics"))


def _finished(folder: Path) -> bool:
    """A run that got to its end: its best.pt carries the calibration written last."""
    return (folder / "best.pt").exists() and "ece_before_calibration" in load_checkpoint(folder)


def _keep_better(run: Run, probe: Run, cfg: TrainConfig, dist: DistInfo) -> None:
    """Compare the fine-tune with the probe per head on validation; with `keep: best-of`, best.pt becomes the
    better of the two by mean macro-F1. Rank 0 decides (it alone validated); every rank follows."""
    decision = None
    if dist.is_main:
        tuned, frozen = run.best, probe.best
        comparison = [HeadComparison(name, frozen["heads"][name]["macro_f1"], m["macro_f1"])
                      for name, m in tuned["heads"].items() if "macro_f1" in m]
        kept = PROBE.name if cfg.keep == "best-of" and frozen["score"] > tuned["score"] else FINETUNE.name
        if kept == PROBE.name:
            with atomic_path(run.dir / "best.pt") as tmp:
                shutil.copyfile(probe.dir / "best.pt", tmp)
        metrics = json.loads((run.dir / "metrics.json").read_text())
        atomic_write_json(run.dir / "metrics.json", {**metrics, "kept": kept, "probe_score": frozen["score"],
                                                     "comparison": [asdict(c) for c in comparison]})
        decision = (kept, [asdict(c) for c in comparison])
    run.kept, comparison = _rank0_value(decision, dist)
    run.comparison = [HeadComparison(**c) for c in comparison]
    if run.kept == PROBE.name:
        run.model, run.val_metrics = probe.model, probe.val_metrics


def _keep_clip_text(model: Tagger, out: Path) -> None:
    """An open_clip backbone's own text tower (as loaded with its weights), saved beside a probe trained on it: the
    image tower stays frozen, so the two still align (text search and zero-shot work on its index). A fine-tune
    changes the image tower, so its run keeps none."""
    source = getattr(model.backbone, "clip_source", None)
    if source is not None:
        from mhtag.models.text import ClipTextTower, save_text_tower

        out.mkdir(parents=True, exist_ok=True)
        save_text_tower(ClipTextTower(source[0], model=source[1]), out)


def _train(cfg: TrainConfig, labels, data: Data, out: Path, state: dict[str, Any] | None, dist: DistInfo,
           device: torch.device, phase: Phase, progress: bool, start: Tagger | None = None) -> Run:
    """One training phase: its epochs, checkpoints, calibration and report. A fresh fine-tune starts from the heads
    of `start` (the probe) when given."""
    seed_everything(cfg.seed)
    table, train_df, val_df = data
    model, dropped = (tagger_from_checkpoint(state).train(), state.get("dropped", {})) if state is not None \
        else _new_model(cfg, labels, data)
    data_config, schema = model.backbone.data_config, model.schema
    if phase is PROBE and state is None and dist.is_main:
        _keep_clip_text(model, out)
    if start is not None:
        _copy_heads(start, model)
    (y_train, _), (y_val, _) = schema.encode(train_df), schema.encode(val_df)
    if cfg.teacher and cfg.distill > 0:
        y_train = {**y_train, **teacher_targets(cfg.teacher, cfg.distill, schema, train_df[FILE].tolist(), y_train,
                                                cfg.batch_size, device, cfg.num_workers, progress and dist.is_main)}
    loss_fn = MultiHeadLoss(schema, cfg.head_weights, cfg.class_weights, cfg.class_weight_cap,
                            n_train=len(train_df), tag_weighting=cfg.pos_weights).to(device)
    epochs = phase.epochs(cfg)
    generator = torch.Generator()
    train_loader, val_loader = phase.loaders(model, cfg, (train_df, val_df, y_train, y_val), device, dist, generator,
                                             progress)
    phase.freeze(model, train_loader, resumed=state is not None)
    model.to(device, memory_format=memory_format(device))  # channels_last on a GPU, as the encoder
    # training's random stream (dropout; augmentation draws per image) starts here, from the seed: embedding the
    # data (a cold cache runs a DataLoader, which draws from it) must not change the model a seed gives
    seed_everything(cfg.seed)
    optimizer = phase.optimizer(model, cfg)
    scheduler = cosine_with_warmup(optimizer, epochs * len(train_loader))
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        history, start_epoch = _restore(state, optimizer, scheduler)
    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                                        else None)
    if dist.is_main:
        atomic_write_text(out / "config.json", json.dumps({**cfg.to_dict(), "resolved_mode": phase.name}, indent=2))
        atomic_write_json(out / "schema.json", schema.to_dict())
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    extra = {"dropped": dropped, "mode": phase.name}
    checkpoints = _Checkpoints(out, phase, best_score=max((h["score"] for h in history), default=-1.0))
    interrupted = False
    show = progress and dist.is_main and phase.shows_batches
    try:
        for epoch in range(start_epoch, epochs):
            generator.manual_seed(cfg.seed * 100_003 + epoch)  # the epoch's order, independent of resumes
            t0 = time.monotonic()
            phase.start_epoch(model, net, train_loader, cfg, epoch)
            tr = train_one_epoch(phase.forward(net), train_loader, loss_fn, device, optimizer, scheduler, cfg.amp,
                                 show, f"epoch {epoch + 1}/{epochs}", len(train_loader))
            if dist.is_main:  # validation, checkpoints and logs happen once, on rank 0
                model.eval()
                va = validate(phase.forward(model), model, val_loader, loss_fn, device, cfg.amp, show,
                              len(val_loader))
                heads = evaluate_outputs(model, va, tune=True)
                history.append({"epoch": epoch, "train_loss": tr.loss, "train_head_losses": tr.head_losses,
                                "val_loss": va.loss, "val_head_losses": va.head_losses, "heads": heads,
                                "score": mean_macro_f1(heads), "seconds": time.monotonic() - t0})
                _log_epoch(history[-1], epochs, phase.log_every(epochs))
                checkpoints.save_best(history[-1]["score"], checkpoint_state(model, cfg.to_dict(), data_config,
                                                                             {**extra, "epoch": epoch}))
                last = {**checkpoint_state(model, cfg.to_dict(), data_config, extra), "epoch": epoch,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state(), "history": list(history)}
                checkpoints.save_last(last, final=epoch == epochs - 1)
            stop = _rank0_value(_stop_reason(cfg, history, deadline) if dist.is_main else None, dist)
            if stop:
                _logger.warning("stopping after epoch %d: %s", epoch + 1, stop)
                break
    except KeyboardInterrupt:
        interrupted = True
    except NonFiniteLoss as exc:
        kept = "the best checkpoint so far is kept in " + str(out) if (out / "best.pt").exists() \
            else "no checkpoint was saved"
        raise MhtagError(f"{exc}; {kept}. Lower the learning rate or check the inputs") from None
    finally:
        checkpoints.flush()  # stopped early, interrupted or failed: the last finished epoch is resumable
    if not (out / "best.pt").exists():
        raise MhtagError("training stopped before the first epoch finished; nothing was saved")
    best = tagger_from_checkpoint(load_checkpoint(out / "best.pt"))
    run = Run(out, best, cfg, data_config, history, table.skipped, dropped, interrupted, kept=phase.name)
    if dist.is_main and not interrupted:
        run.report, run.val_metrics = _finish(best, val_loader, loss_fn, device, cfg, out, data_config, extra,
                                              history, phase)
    return run


def _new_model(cfg: TrainConfig, labels, data: Data) -> tuple[Tagger, dict[str, str]]:
    """A fresh tagger with a head per attribute of the training rows that has something to learn; returns it and
    the attributes left out (with why)."""
    table, train_df, _ = data
    schema, dropped = LabelSchema.fit(train_df, table.attributes, table.multilabel)
    for name, why in dropped.items():
        _logger.warning("attribute %r is not a head: %s", name, why)
    if not schema.attributes:
        raise MhtagError(f"{labels}: no attribute has two or more classes to learn "
                         f"({'; '.join(dropped.values())})")
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.checkpoint, image_size=cfg.image_size,
                               tta_flip=_tta_flip(cfg, schema), colour_bins=cfg.colour_histogram)
    return Tagger(backbone, schema, cfg.dropout), dropped


class _Checkpoints:
    """best.pt whenever validation improves; last.pt (resumable) and metrics.json at most every LAST_EVERY_S and
    after the last epoch, the newest epoch's state held in memory in between, so that any stop can still write it."""

    def __init__(self, out: Path, phase: Phase, best_score: float):
        self.out, self.phase, self.best_score = out, phase, best_score
        self.pending: dict[str, Any] | None = None  # the newest epoch's resumable state, not yet on disk
        self.last_written = time.monotonic()

    def save_best(self, score: float, state: dict[str, Any]) -> None:
        if score > self.best_score:
            self.best_score = score
            save_checkpoint(state, self.out / "best.pt")

    def save_last(self, state: dict[str, Any], final: bool) -> None:
        if final or time.monotonic() - self.last_written >= LAST_EVERY_S:
            _write_last(self.out, state, self.phase)
            self.pending, self.last_written = None, time.monotonic()
        else:  # a copy only when it is kept: training goes on changing the tensors it refers to
            self.pending = _held_copy(state, self.phase)

    def flush(self) -> None:
        if self.pending is not None:
            _write_last(self.out, self.pending, self.phase)
            self.pending = None


def _finish(best: Tagger, val_loader, loss_fn: MultiHeadLoss, device: torch.device, cfg: TrainConfig, out: Path,
            data_config: dict[str, Any], extra: dict[str, Any], history: list[dict[str, Any]],
            phase: Phase) -> tuple[Path | None, dict[str, Any]]:
    """Calibrate the best model on the validation rows and write the run's report. Returns the report's path (if
    written) and the calibrated model's validation metrics, each head's ECE before calibration beside its own."""
    best.to(device)
    va = validate(phase.forward(best), best, val_loader, loss_fn, device, cfg.amp)
    uncalibrated = _calibrate(best, va, out, cfg, data_config, extra)
    heads = evaluate_outputs(best, va, tune=False)
    for name, ece in calibration_errors(best.schema, uncalibrated, va.targets).items():
        heads[name]["ece_uncalibrated"] = ece
    state = load_checkpoint(out / "best.pt")
    save_checkpoint({**state, "val_metrics": heads}, out / "best.pt")
    report = None
    if cfg.report:
        report = write_run_report(out, history, heads, va.probs, va.targets,
                                  best.schema, title=f"mhtag run {out.name} ({phase.name}, {cfg.backbone})",
                                  reliability=reliability_curves(best.schema, va.targets, before=uncalibrated,
                                                                 after=va.probs))
    best.cpu()
    return report, heads


def _held_copy(state: dict[str, Any], phase: Phase) -> dict[str, Any]:
    """A copy of an epoch's resumable `state` that later steps cannot change. Past epochs' history entries never
    change and are shared; the model's tensors are copied as the phase says (a frozen backbone is shared)."""
    rest = copy.deepcopy({k: v for k, v in state.items() if k not in ("model", "history")})
    return {**rest, "model": phase.held_copy(state["model"]), "history": state["history"]}


def _tta_flip(cfg: TrainConfig, schema: LabelSchema) -> bool:
    """The config's test-time flip, unless a head's labels change under a mirror (view/side heads, aug_forbid)."""
    if cfg.tta_flip and mirroring_forbidden(schema.names, cfg.aug_forbid):
        _logger.warning("tta_flip is off: a head forbids horizontal flips")
        return False
    return cfg.tta_flip


def _write_last(out: Path, state: dict[str, Any], phase: Phase) -> None:
    """last.pt (resumable) and metrics.json as of the epoch in `state`."""
    save_checkpoint(state, out / "last.pt")
    atomic_write_json(out / "metrics.json", {"mode": phase.name, "epochs": state["history"]})


def _calibrate(best: Tagger, va: EpochResult, out: Path, cfg: TrainConfig, data_config: dict[str, Any],
               extra: dict[str, Any]) -> dict[str, np.ndarray]:
    """Temperatures per single-label head and, where it helps, per-tag Platt scaling per tag group (its tuned
    thresholds mapped with it, so its answers do not change), fitted on the validation rows and stored in best.pt.
    `va` becomes the calibrated outputs; returns the uncalibrated ones (for the report's before/after)."""
    raw = va.probs
    va.probs = calibrate(best, raw, va.targets)
    before = calibration_errors(best.schema, raw, va.targets)
    for name, after in calibration_errors(best.schema, va.probs, va.targets).items():
        _logger.info("%s: val ECE %.3f -> %.3f", name, before[name], after)
    state = load_checkpoint(out / "best.pt")
    save_checkpoint({**checkpoint_state(best, cfg.to_dict(), data_config, {**extra, "epoch": state.get("epoch")}),
                     "ece_before_calibration": before}, out / "best.pt")
    return raw


def _restore(state: dict[str, Any], optimizer, scheduler) -> tuple[list[dict[str, Any]], int]:
    """Optimizer, schedule and RNG from `last.pt`; the learning rates are the (possibly changed) config's."""
    configured = [g["lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = configured
    for group, lr in zip(optimizer.param_groups, configured, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    torch.set_rng_state(state["rng"])
    return state["history"], state["epoch"] + 1


def _stop_reason(cfg: TrainConfig, history: list[dict[str, Any]], deadline: float) -> str | None:
    if cfg.patience and history:
        best = max(history, key=lambda h: h["score"])["epoch"]
        if history[-1]["epoch"] - best >= cfg.patience:
            return f"no better validation macro-F1 in {cfg.patience} epoch(s) (patience)"
    if time.monotonic() > deadline:
        return f"max_minutes={cfg.max_minutes} reached (continue with --resume --set max_minutes=...)"
    return None


def _rank0_value(value: Any, dist: DistInfo) -> Any:
    """Every process follows rank 0 (its clock and its validation decide when to stop); also a barrier."""
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _copy_heads(source: Tagger, target: Tagger) -> None:
    target.heads.load_state_dict(source.heads.state_dict())
    target.feature_norm.load_state_dict(source.feature_norm.state_dict())
    target.thresholds_ = {k: list(v) for k, v in source.thresholds_.items()}


def _log_epoch(h: dict[str, Any], epochs: int, every: int) -> None:
    if h["epoch"] % every == 0 or h["epoch"] == epochs - 1:
        accs = ", ".join(f"{k} {m.get('accuracy', 0):.3f}" for k, m in h["heads"].items())
        _logger.info("epoch %d/%d train %.4f val %.4f macro-F1 %.3f | %s", h["epoch"] + 1, epochs,
                     h["train_loss"], h["val_loss"], h["score"], accs)
