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


def write_run_report(out: Path, history: list[dict[str, Any]], heads: dict[str, dict[str, Any]],
                     probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], schema: LabelSchema,
                     title: str) -> Path:
    """report.html: per-head metric tables, confusion matrices (also saved as PNG) and training curves."""
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Validation metrics (best checkpoint)</h2>",
             f"<pre>{html.escape(metrics_table(heads))}</pre>"]
    if history:
        parts += ["<h2>Training curves</h2>", f'<img src="data:image/png;base64,{curves_png(history)}">']
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
    page = "<!doctype html><meta charset='utf-8'><style>body{font-family:sans-serif}</style>" + "\n".join(parts)
    return atomic_write_text(out / "report.html", page)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def class_distribution_png(h: dict[str, Any], path: Path, max_classes: int = 30) -> Path:
    plt = _plt()
    attrs = h["attributes"]
    fig, axes = plt.subplots(len(attrs), 1, figsize=(10, 2.6 * max(1, len(attrs))), squeeze=False)
    for ax, (name, a) in zip(axes[:, 0], attrs.items(), strict=True):
        items = list(a["counts"].items())[:max_classes]
        ax.bar([str(k) for k, _ in items], [v for _, v in items], color="#4477aa")
        ax.set_title(f"{name} ({len(a['counts'])} classes)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.set_yscale("log")
    fig.tight_layout()
    return atomic_write_bytes(path, base64.b64decode(_png(fig)))
