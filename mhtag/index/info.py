"""What an index holds, for a person or a program: its attributes with their values and counts, and its health."""

from __future__ import annotations

from pathlib import Path

from mhtag.core.storage import location
from mhtag.index.guard import guard_index
from mhtag.index.memory import facet_counts
from mhtag.index.meta import current_meta
from mhtag.index.store import DEFAULT_DB, snapshot
from mhtag.models import TEXT_TOWER
from mhtag.results import AttributeInfo, Attributes, Health, ValueCount


@guard_index
def index_attributes(db: str | Path = DEFAULT_DB) -> Attributes:
    """Every attribute with its values and their counts over the whole index (label where known, else
    prediction); values known to the index but on no row are listed with 0."""
    db = location(db)
    meta = current_meta(db)
    counts = facet_counts(snapshot(db), meta, None)
    out = []
    for a in meta.attributes:
        seen = counts.get(a.name, {})
        rest = sorted((set(a.classes) | set(a.label_values)) - set(seen))
        values = [ValueCount(value=v, count=n) for v, n in seen.items()] + \
            [ValueCount(value=v, count=0) for v in rest if v not in seen]
        out.append(AttributeInfo(name=a.name, kind=str(a.kind), has_head=a.has_head, has_labels=a.has_labels,
                                 values=values))
    return Attributes(attributes=out, texts=list(meta.text_columns))


def has_text_tower(model_path: str | None) -> bool:
    """Whether the model keeps a text tower beside it (text queries, zero-shot, describe); nothing is loaded."""
    return model_path is not None and (Path(model_path).parent / TEXT_TOWER).is_file()


@guard_index
def index_health(db: str | Path = DEFAULT_DB) -> Health:
    db = location(db)
    meta = current_meta(db)
    snap = snapshot(db)
    return Health(rows=snap.rows.num_rows, model=meta.model_path, backbone=meta.backbone, version=snap.version,
                  label_changes=meta.label_changes,
                  changes_since_model=max(0, meta.labels_applied - meta.model_labels) if meta.model_path else 0,
                  text_search=has_text_tower(meta.model_path))
