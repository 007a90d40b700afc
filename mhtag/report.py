"""Formatters: metrics to text tables, the run's HTML report with PNG charts, and the data-health chart.

Nothing here trains or reads images; it turns results into something a person reads.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from mhtag.data import LabelSchema

SINGLE_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy", "ece")
MULTI_COLUMNS = ("micro_f1", "macro_f1", "mAP", "exact_match", "hamming_accuracy")
MAX_CONFUSION_CLASSES = 25


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_table(heads: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table, one line per head."""
    lines = []
    for kind, cols in (("single", SINGLE_COLUMNS), ("multi", MULTI_COLUMNS)):
        rows = {k: m for k, m in heads.items() if m.get("kind") == kind}
        if not rows:
            continue
        width = max(len(k) for k in rows) + 2
        lines.append("head".ljust(width) + "n".rjust(7) + "".join(c.rjust(18) for c in cols))
        for name, m in rows.items():
            cells = "".join((f"{m[c]:.4f}" if c in m else "-").rjust(18) for c in cols)
            lines.append(name.ljust(width) + str(m.get("n", 0)).rjust(7) + cells)
        lines.append("")
    return "\n".join(lines).rstrip()


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
        path.write_bytes(base64.b64decode(data))
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
        if a.kind == "single":
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
    path = out / "report.html"
    path.write_text(page)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def health_text(h: dict[str, Any]) -> str:
    lines = [f"rows: {h['rows']} usable, {len(h['skipped'])} skipped", f"splits: {h['splits']}"]
    for name, a in h["attributes"].items():
        top = ", ".join(f"{c}={n}" for c, n in list(a["counts"].items())[:8])
        more = f" (+{len(a['counts']) - 8} more)" if len(a["counts"]) > 8 else ""
        lines.append(f"{name} [{a['kind']}]: {len(a['counts'])} classes, imbalance {a['imbalance_ratio']:.1f}x, "
                     f"missing {a['missing']}: {top}{more}")
    if h["text_columns"]:
        lines.append(f"free-text columns (not heads): {', '.join(h['text_columns'])}")
    sizes = h["images"]
    lines.append(f"image sizes (w x h): {sizes['sizes']}")
    lines.append(f"image modes: {sizes['modes']}")
    lines.append(f"unreadable files: {len(h['unreadable'])}")
    lines += [f"  {u['path']}: {u['reason']}" for u in h["unreadable"][:20]]
    lines.append(f"byte-identical duplicate groups: {len(h['duplicates'])} "
                 f"({h['cross_split_duplicates']} cross splits)")
    lines += [f"  skipped {s}" for s in h["skipped"][:20]]
    return "\n".join(lines)


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
    path.write_bytes(base64.b64decode(_png(fig)))
    return path


def predictions_text(result: dict[str, Any]) -> str:
    """Human-readable `mhtag predict` output: one block per image, one line per attribute."""
    lines = []
    for p in result["predictions"]:
        lines.append(p["path"])
        for name, a in p["attributes"].items():
            fused = a["fused"]["label"]
            fused = ", ".join(fused) or "(none)" if isinstance(fused, list) else fused
            head = " ".join(f"{lab}:{pr:.2f}" for lab, pr in a["head"]) or "-"
            nbr = " ".join(f"{lab}:{sh:.2f}" for lab, sh in a["neighbours"]) or "-"
            flag = "" if a["agree"] is not False else "  (head and neighbours disagree)"
            conf = a["fused"]["confidence"]
            lines.append(f"  {name:<16} {fused} ({conf:.2f})   head {head} | neighbours {nbr}{flag}")
    for f in result.get("failed", []):
        lines.append(f"skipped {f['path']}: {f['reason']}")
    return "\n".join(lines)


def search_text(result: dict[str, Any], attributes: list[str]) -> str:
    lines = [f"{result['matched']} row(s) match; showing {len(result['results'])}"]
    for r in result["results"]:
        attrs = " ".join(f"{a}={_fmt(r[a])}" for a in attributes if r.get(a))
        lines.append(f"{r['score']:.3f}  {r['path']}  {attrs}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "|".join(v) if isinstance(v, list) else str(v)


def contact_sheet(results: list[dict[str, Any]], attributes: list[str], path: Path, thumb: int = 160,
                  columns: int = 6) -> Path:
    """A grid of result thumbnails, each captioned with its score and attributes."""
    from PIL import Image, ImageDraw

    from mhtag.data import load_image
    from mhtag.errors import ImageError

    caption = 14 * (1 + min(len(attributes), 4))
    rows = max(1, -(-len(results) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(results):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        try:
            img = load_image(r["path"])
            img.thumbnail((thumb - 4, thumb - 4))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except ImageError:
            draw.text((x + 4, y + thumb // 2), "unreadable", fill="red")
        text = [f"{r['score']:.3f}"] + [f"{a}: {_fmt(r[a])}"[:26] for a in attributes[:4] if r.get(a)]
        for j, t in enumerate(text):
            draw.text((x + 4, y + thumb + 14 * j), t, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
