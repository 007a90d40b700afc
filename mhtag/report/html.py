"""HTML and charts: the run's report (metrics, confusion matrices, curves) and the data-health chart."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from mhtag.core.io import atomic_write_bytes, atomic_write_text
from mhtag.data.schema import LabelSchema
from mhtag.report.text import metrics_table

MAX_CONFUSION_CLASSES = 25


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def confusion_png(y: np.ndarray, pred: np.ndarray, classes: list[str], title: str, path: Path | None = None) -> str:
    """Row-normalised confusion matrix of the most frequent classes; returns base64 PNG (and writes `path`)."""
    from sklearn.metrics import confusion_matrix

    support = np.bincount(y, minlength=len(classes))
    keep = np.argsort(-support)[:MAX_CONFUSION_CLASSES]
    keep = np.sort(keep[support[keep] > 0])
    cm = confusion_matrix(y, pred, labels=keep).astype(float)
    cm /= np.maximum(cm.sum(1, keepdims=True), 1)
    plt = _plt()
    size = 2.5 + 0.32 * len(keep)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    names = [classes[i] for i in keep]
    ax.set_xticks(range(len(keep)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    data = _png(fig)
    if path is not None:
        atomic_write_bytes(path, base64.b64decode(data))
    return data


def curves_png(history: list[dict[str, Any]]) -> str:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] + 1 for h in history]
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_title("loss")
    a.legend()
    for name in history[0]["heads"] if history else []:
        b.plot(epochs, [h["heads"][name].get("macro_f1", 0) for h in history], label=name)
    b.set_title("val macro-F1 per head")
    b.legend(fontsize=7)
    return _png(fig)


def reliability_png(name: str, multi: bool, curves: dict[str, dict[str, Any]], path: Path | None = None) -> str:
    """A reliability diagram: per confidence bin, the share right against the mean confidence, one line per
    curve (e.g. before / after calibration), each point's area its share of the rows, ECE in the legend; the
    diagonal is perfect calibration, and grey bars around it the 5-95% range a perfectly calibrated model with the
    last curve's confidences would show in each bin on this many rows (its consistency bars)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    last = list(curves.values())[-1] if curves else {}
    if last.get("band_low"):
        ax.vlines(last["confidence"], last["band_low"], last["band_high"], color="#bbb", lw=4,
                  label=f"90% range if calibrated (ECE p95 {last['ece_floor_p95']:.3f})")
    for label, c in curves.items():
        line, = ax.plot(c["confidence"], c["accuracy"], lw=1, label=f"{label} (ECE {c['ece']:.3f})")
        share = np.asarray(c["count"], float) / max(sum(c["count"]), 1)
        ax.scatter(c["confidence"], c["accuracy"], s=8 + 120 * share, color=line.get_color())  # area: rows in bin
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("tag probability" if multi else "confidence (top-1)")
    ax.set_ylabel("share with the tag" if multi else "accuracy")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    data = _png(fig)
    if path is not None:
        atomic_write_bytes(path, base64.b64decode(data))
    return data


def reliability_section(curves: dict[str, dict[str, dict[str, Any]]], multi: dict[str, bool], heading: str,
                        png_dir: Path | None = None) -> list[str]:
    """HTML of a reliability diagram per head (`multi`: whether each head is a tag group), each also saved as
    png_dir/<head>.png when given."""
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h2>{html.escape(heading)}</h2>"]
    for name, versions in curves.items():
        img = reliability_png(name, multi[name], versions, png_dir / f"{_safe(name)}.png" if png_dir else None)
        parts.append(f'<img src="data:image/png;base64,{img}" alt="reliability diagram of {html.escape(name)}">')
    return parts


def _page(parts: list[str]) -> str:
    return "<!doctype html><meta charset='utf-8'><style>body{font-family:sans-serif}</style>" + "\n".join(parts)


def write_eval_report(path: Path, result: dict[str, Any], title: str) -> Path:
    """`mhtag eval --report`: the split's metric table and a reliability diagram per head, before and after
    calibration."""
    multi = {name: m.get("kind") == "multi" for name, m in result["heads"].items()}
    parts = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(metrics_table(result['heads']))}</pre>"]
    parts += reliability_section(result["reliability"], multi, f"Calibration on split {result['split']!r}")
    return atomic_write_text(path, _page(parts))


def write_run_report(out: Path, history: list[dict[str, Any]], heads: dict[str, dict[str, Any]],
                     probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], schema: LabelSchema,
                     title: str, reliability: dict[str, dict[str, dict[str, Any]]] | None = None) -> Path:
    """report.html: per-head metric tables, training curves, reliability diagrams (`reliability`: per head, per
    version such as before/after calibration) and confusion matrices (diagrams and matrices also saved as PNG)."""
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Validation metrics (best checkpoint)</h2>",
             f"<pre>{html.escape(metrics_table(heads))}</pre>"]
    if history:
        parts += ["<h2>Training curves</h2>", f'<img src="data:image/png;base64,{curves_png(history)}">']
    if reliability:
        parts += reliability_section(reliability, {a.name: a.multi for a in schema.attributes},
                                     "Calibration on the validation rows", out / "reliability")
    parts.append("<h2>Confusion matrices</h2>")
    (out / "confusion").mkdir(exist_ok=True)
    for a in schema.attributes:
        y = targets[a.name]
        if not a.multi:
            valid = y >= 0
            img = confusion_png(y[valid], probs[a.name][valid].argmax(1), a.classes, a.name,
                                out / "confusion" / f"{_safe(a.name)}.png")
            parts.append(f'<h3>{html.escape(a.name)}</h3><img src="data:image/png;base64,{img}">')
        else:
            from sklearn.metrics import f1_score

            pred = probs[a.name] >= np.asarray(heads[a.name].get("thresholds", 0.5))
            f1 = f1_score(y.astype(int), pred.astype(int), average=None, zero_division=0)
            rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{f:.3f}</td></tr>"
                           for c, f in zip(a.classes, f1, strict=True))
            parts.append(f"<h3>{html.escape(a.name)} (tags)</h3><table><tr><th>tag</th><th>F1</th></tr>{rows}</table>")
    return atomic_write_text(out / "report.html", _page(parts))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


MAX_CHARTED = 24  # attributes drawn in classes.png (drawing hundreds of charts took minutes); the JSON has all


def class_distribution_png(h: dict[str, Any], path: Path, max_classes: int = 30) -> Path:
    """Class counts of the first MAX_CHARTED attributes, one bar chart each."""
    plt = _plt()
    attrs = dict(list(h["attributes"].items())[:MAX_CHARTED])
    fig, axes = plt.subplots(len(attrs), 1, figsize=(10, 2.6 * max(1, len(attrs))), squeeze=False)
    for ax, (name, a) in zip(axes[:, 0], attrs.items(), strict=True):
        items = list(a["counts"].items())[:max_classes]
        ax.bar([str(k) for k, _ in items], [v for _, v in items], color="#4477aa")
        ax.set_title(f"{name} ({len(a['counts'])} classes)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.set_yscale("log")
    fig.tight_layout()
    return atomic_write_bytes(path, base64.b64decode(_png(fig)))
