"""Data health before training (`mhtag inspect`): class balance, missing values, image sizes and modes,
unreadable files and byte-identical duplicates, including those that cross splits."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mhtag.data.images import probe_in_chunks
from mhtag.data.labels import FILE, read_labels
from mhtag.data.schema import AttributeKind, value_counts


def inspect_labels(labels: str | Path, images: str | Path | None = None, multilabel: list[str] | tuple = (),
                   ignore: list[str] | tuple = (), workers: int = 4, progress: bool = False) -> dict[str, Any]:
    table = read_labels(labels, images, multilabel, ignore)
    frame = table.frame
    attributes = {}
    for name in table.attributes:
        kind = AttributeKind.MULTI if name in table.multilabel else AttributeKind.SINGLE
        counts = value_counts(frame[name], kind)
        attributes[name] = {
            "kind": kind.value,
            "counts": counts,
            "missing": int(frame[name].isna().sum()) if kind is AttributeKind.SINGLE else 0,
            "imbalance_ratio": (max(counts.values()) / min(counts.values())) if counts else 0.0,
        }
    infos = [info for chunk in probe_in_chunks(frame[FILE].tolist(), workers, progress) for info in chunk]
    good = [(i, info) for i, info in enumerate(infos) if not info.error]
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, info in good:
        by_hash[info.sha1].append(i)
    groups = [idx for idx in by_hash.values() if len(idx) > 1]
    duplicates = [[frame["path"].iat[i] for i in idx] for idx in groups]
    cross = sum(1 for idx in groups if len({frame["split"].iat[i] for i in idx}) > 1)
    return {
        "labels": str(labels),
        "rows": len(frame),
        "splits": dict(Counter(frame["split"])),
        "attributes": attributes,
        "text_columns": table.text_columns,
        "images": {
            "sizes": dict(Counter(f"{info.width}x{info.height}" for _, info in good).most_common(10)),
            "modes": dict(Counter(info.mode for _, info in good)),
        },
        "unreadable": [{"path": frame["path"].iat[i], "reason": info.error} for i, info in enumerate(infos)
                       if info.error],
        "duplicates": duplicates,
        "cross_split_duplicates": cross,
        "skipped": [str(s) for s in table.skipped],
    }
