"""Text for a terminal: metric tables, data health, predictions and search results."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from mhtag.data.schema import AttributeKind, join_tags
from mhtag.results import PredictResult, SearchResult

SINGLE_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy", "ece", "ece_floor_p95",
                  "ece_uncalibrated")
MULTI_COLUMNS = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "mAP", "exact_match", "hamming_accuracy",
                 "ece", "ece_floor_p95", "ece_uncalibrated")
FLOOR_NOTE = ("ece_floor_p95: 95% of perfectly calibrated models with these confidences score an ECE below it on "
              "this many rows; an ece under it is calibration this split cannot fault")


def metrics_table(heads: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table, one line per head."""
    lines = []
    for kind, cols in ((AttributeKind.SINGLE.value, SINGLE_COLUMNS), (AttributeKind.MULTI.value, MULTI_COLUMNS)):
        rows = {k: m for k, m in heads.items() if m.get("kind") == kind}
        if not rows:
            continue
        cols = [c for c in cols if any(c in m for m in rows.values())]  # a column no head has says nothing
        width = max(len(k) for k in rows) + 2
        lines.append("head".ljust(width) + "n".rjust(7) + "".join(c.rjust(18) for c in cols))
        for name, m in rows.items():
            cells = "".join((f"{m[c]:.4f}" if c in m else "-").rjust(18) for c in cols)
            lines.append(name.ljust(width) + str(m.get("n", 0)).rjust(7) + cells)
        lines.append("")
    return "\n".join(lines).rstrip()


def shift_table(result: dict[str, Any]) -> str:
    """`mhtag eval --shift`: one line per attribute and answer source, one column per shift ("clean" first)."""
    shifts = list(result["shifts"])
    width = max(len(a) for a in result["attributes"]) + 13
    lines = ["attribute / source".ljust(width) + "".join(s[:12].rjust(13) for s in shifts)]
    for attr in result["attributes"]:
        for source, scores in result["shifts"][shifts[0]].items():
            if attr in scores:
                cells = "".join(f"{result['shifts'][s][source].get(attr, float('nan')):.4f}".rjust(13) for s in shifts)
                lines.append(f"{attr} / {source}".ljust(width) + cells)
    return "\n".join(lines)


def comparison_lines(comparison: list, kept: str, keep: str) -> list[str]:
    """The end of a fine-tune: one line per head where it lost to the probe on validation, then which model the
    run ships. `comparison` holds objects with `name`, `probe` and `finetune` (validation macro-F1)."""
    lines = [f"fine-tune below the probe on {c.name}: val macro-F1 {c.finetune:.4f} < {c.probe:.4f}"
             for c in comparison if c.finetune < c.probe]
    if not comparison:
        return lines
    if kept == "probe":
        lines.append("kept the probe (better mean val macro-F1): best.pt holds the frozen backbone and the probe's "
                     "heads")
    elif lines:
        lines.append("kept the fine-tune" + (" (keep=finetune)" if keep == "finetune"
                                             else " (better mean val macro-F1)"))
    return lines


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


def shown(text: str) -> str:
    """One line per item: control characters in names (a newline in a file name) are shown escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def predictions_text(result: PredictResult) -> str:
    """Human-readable `mhtag predict` output: one block per image, one line per attribute."""
    lines = []
    for p in result.predictions:
        lines.append(shown(p.path))
        if p.labels:
            lines.append("  known labels: " + ", ".join(f"{shown(k)}={shown(_fmt(v))}" for k, v in p.labels.items()))
        if not p.attributes:
            lines.append("  no attributes yet: the index holds no labels and no heads to answer with (see `mhtag "
                         "labels import --help`, then `mhtag train --db`); similar images: `mhtag search --like`")
        for name, a in p.attributes.items():
            fused = a.fused.label
            fused = ", ".join(fused) or "(none)" if isinstance(fused, list) else fused
            head = " ".join(f"{lab}:{pr:.2f}" for lab, pr in a.head) or "-"
            nbr = " ".join(f"{lab}:{sh:.2f}" for lab, sh in a.neighbours) or "-"
            flag = "" if a.agree is not False else "  (head and neighbours disagree)"
            source = "zero-shot" if a.zero_shot else "head"
            lines.append(f"  {shown(name):<16} {shown(fused)} ({a.fused.confidence:.2f})   {source} {shown(head)} | "
                         f"neighbours {shown(nbr)}{flag}")
        if p.described:
            lines.append("  described as: " + ", ".join(f"{shown(w)} ({s:.2f})" for w, s in p.described))
    lines += [f"skipped {shown(f.path)}: {f.reason}" for f in result.failed]
    return "\n".join(lines)


def search_text(result: SearchResult, attributes: list[str]) -> str:
    score = {"similarity": "cosine similarity to the query", "confidence": "mean confidence of the filtered heads",
             "path": "0 (sorted by path)", "changed": "when a label last changed (UNIX time)"}[result.ranked_by]
    lines = [f"{result.matched} row(s) match; showing {len(result.results)}, first column: {score}"]
    for r in result.results:
        row = r.model_dump()
        attrs = " ".join(f"{a}={_fmt(row[a])}" for a in attributes if row.get(a))
        lines.append(f"{r.score:.3f}  {shown(r.path)}  {shown(attrs)}")
    for name, counts in result.facets.items():
        lines.append(f"{shown(name)}: " + ", ".join(f"{shown(v)} ({n})" for v, n in list(counts.items())[:12]))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return join_tags(v) if isinstance(v, list) else str(v)


def model_comparison_table(models: dict[str, dict[str, dict[str, Any]]], metric: str = "accuracy") -> str:
    """One line per head, one column per model (its per-head metrics), e.g. an ensemble beside its members."""
    titles = {name: PurePath(name).name for name in models}
    heads = list(next(iter(models.values())))
    width = max(len(h) for h in heads) + 2
    cols = {name: max(len(t), 8) + 2 for name, t in titles.items()}
    lines = [f"{metric} by head".ljust(width) + "".join(t.rjust(cols[n]) for n, t in titles.items())]
    for h in heads:
        lines.append(h.ljust(width) + "".join(f"{models[n][h][metric]:.4f}".rjust(cols[n]) for n in models))
    return "\n".join(lines)
