"""Typed results: one definition of each answer, printed by the CLI's `--json` and returned by the API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

# Row ids are 64-bit; JSON carries them as strings, since JavaScript numbers keep only 53 bits.
RowId = Annotated[int, PlainSerializer(str, return_type=str, when_used="json"),
                  Field(description="row id (a 64-bit integer, as a string in JSON)")]


class LabelChange(BaseModel):
    """One recorded change of a known label."""

    id: int
    row: RowId
    rel: str
    attribute: str
    old: str | list[str] | None
    new: str | list[str] | None
    at: str = Field(description="when (ISO 8601, UTC)")
    source: str = Field(description="gallery, review, csv, api or undo")
    note: str = ""


class RetrainReport(BaseModel):
    """Heads retrained from a catalogue's labels, and every row refreshed with them."""

    db: str
    model: str = Field(description="the new model's run folder")
    labelled_rows: int
    changes_included: int = Field(description="the last label change the model was trained with")
    train_seconds: float
    refresh_seconds: float
    rows_refreshed: int
    val_metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ReviewItem(BaseModel):
    """A known label the head and the labelled neighbours doubt."""

    id: RowId
    rel: str
    attribute: str
    given: str
    suggested: str
    score: float = Field(description="how much the fused answer doubts the label: 1 - its share for the label")
    head: list[tuple[str, float]] = Field(description="the head's top 3: [label, probability]")
    neighbours: list[tuple[str, float]] = Field(description="the labelled neighbours' vote: [label, share]")
    neighbour_ids: list[RowId] = Field(description="the nearest labelled rows (their thumbnails say why)")


class ReviewQueue(BaseModel):
    total: int = Field(description="doubted labels not yet reviewed")
    items: list[ReviewItem]


class Failure(BaseModel):
    """An input that could not be used, with the reason."""

    path: str
    reason: str


class Fused(BaseModel):
    label: str | list[str]  # a tag group answers with a list of tags
    confidence: float


class AttributeAnswer(BaseModel):
    head: list[tuple[str, float]] = Field(description="the head's top 3: [label, probability] (a zero-shot "
                                                      "attribute's: the prompts' softmax)")
    neighbours: list[tuple[str, float]] = Field(description="labelled neighbours' top 3: [label, share]")
    fused: Fused
    agree: bool | None = Field(description="head and neighbours name the same top label (null: one is absent)")
    zero_shot: bool = Field(False, description="answered from prompts through the text tower, not a trained head")


class ImagePrediction(BaseModel):
    path: str
    attributes: dict[str, AttributeAnswer]
    labels: dict[str, str | list[str]] = Field(default_factory=dict,
                                               description="the known labels, where the image is an indexed row")
    neighbour_ids: list[RowId] = Field(default_factory=list, description="the nearest labelled rows, which vote")
    described: list[tuple[str, float]] = Field(default_factory=list, description="the caption phrases most aligned "
                                                                                 "with the image: [phrase, score]")


class PredictResult(BaseModel):
    predictions: list[ImagePrediction] = Field(default_factory=list)
    failed: list[Failure] = Field(default_factory=list)


class SearchHit(BaseModel):
    """One row: its id, path and score, then per attribute `<a>` (the answer: the known label where there is one,
    else the prediction), `<a>_label`, `<a>_pred` and `<a>_confidence` where the index has them, and each free-text
    column of the labels (a product title) under its own name."""

    model_config = ConfigDict(extra="allow")
    id: RowId
    path: str = Field(description="the file (in API answers: under the indexed folder, as `rel`)")
    rel: str = Field("", description="the file's path under the folder it was indexed from")
    score: float


class SearchResult(BaseModel):
    matched: int
    ranked_by: str = Field("confidence", description="what each hit's score is: `similarity` (cosine, to the "
                                                     "query image, row or vector) or `confidence` (the mean "
                                                     "confidence of the filtered heads' predictions)")
    results: list[SearchHit] = Field(default_factory=list)
    facets: dict[str, dict[str, int]] = Field(default_factory=dict,
                                              description="per attribute, matched rows per value")


class IndexReport(BaseModel):
    db: str
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    refreshed: int = 0  # same bytes, new mtime or known labels: those columns updated, not embedded again
    pruned: int = 0
    vanished: int = 0  # rows whose file is gone, kept because prune was off
    failed: list[Failure] = Field(default_factory=list)
    unmatched_labels: int = 0  # rows of the labels CSV that match no indexed image
    seconds: float = 0.0
    has_heads: bool = False
    fusion: dict[str, float] = Field(default_factory=dict)  # attribute -> head weight, tuned on val rows
    fusion_tau: dict[str, float] = Field(default_factory=dict)  # attribute -> neighbour vote temperature, tuned too
    zero_shot: list[str] = Field(default_factory=list)  # attributes answered from prompts in this run
    ids: list[RowId] = Field(default_factory=list)  # row ids written by this run

    @property
    def images_per_second(self) -> float:
        return (self.added + self.updated) / self.seconds if self.seconds else 0.0


class CacheReport(BaseModel):
    """The feature store: what it holds and, after `prune_store`, what was removed."""

    folder: str
    entries: int = Field(description="backbone tables: one per backbone weights, preprocessing and options")
    bytes: int
    oldest_use_days: float | None = None
    newest_use_days: float | None = None
    removed: int = 0
    freed_bytes: int = 0
    forgotten_checks: int = Field(0, description="remembered image checks dropped because their file is gone")


class ExportReport(BaseModel):
    """An index export: where it went, in which format, how many rows and which columns."""

    path: str
    format: str = Field(description="csv, parquet or jsonl")
    rows: int
    columns: list[str]


class ImportReport(BaseModel):
    """A file of label corrections applied to an index."""

    csv: str
    rows: int = Field(description="rows of the file")
    applied_rows: int = Field(description="rows whose labels were applied")
    changes: int = Field(description="labels that changed (a label already at its value is no change)")
    skipped: list[str] = Field(default_factory=list, description="rows not applied: line, path and why")


class RetrainStatus(BaseModel):
    """The service's retraining from the catalogue: idle, running (its phase), done (its report) or failed."""

    state: str = "idle"
    phase: str = ""
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    report: RetrainReport | None = None


class Health(BaseModel):
    status: str = "ok"
    rows: int
    model: str | None
    backbone: str
    version: int = Field(description="the table version the answers come from")
    label_changes: int = Field(0, description="label changes recorded in the catalogue")
    changes_since_model: int = Field(0, description="label changes made after the model was trained")
    text_search: bool = Field(False, description="the index's model has a text tower: text queries, zero-shot, "
                                                 "describe")


class ValueCount(BaseModel):
    value: str
    count: int


class AttributeInfo(BaseModel):
    name: str
    kind: str  # single | multi
    has_head: bool
    has_labels: bool
    values: list[ValueCount]


class Attributes(BaseModel):
    attributes: list[AttributeInfo]
    texts: list[str] = Field(default_factory=list, description="the free-text columns (a product title), by name")


class RowDetail(BaseModel):
    id: RowId
    path: str
    rel: str = ""
    size: int
    width: int
    height: int
    split: str | None
    labels: dict[str, str | list[str]] = Field(description="known labels")
    attributes: dict[str, AttributeAnswer] = Field(description="head, neighbours, fused and agree, per attribute")
    texts: dict[str, str] = Field(default_factory=dict, description="the free-text columns (a product title)")
    neighbour_ids: list[RowId] = Field(default_factory=list, description="the nearest labelled rows, which vote")
    described: list[tuple[str, float]] = Field(default_factory=list, description="the caption phrases most aligned "
                                                                                 "with the image: [phrase, score]")
    history: list[LabelChange] = Field(default_factory=list, description="the row's label changes, oldest first")


class Added(BaseModel):
    ids: list[RowId]
    added: int
    unchanged: int
    failed: list[Failure] = Field(default_factory=list)


class Deleted(BaseModel):
    id: RowId
    deleted: bool = True


class ErrorBody(BaseModel):
    error: str


class Suspect(BaseModel):
    """A label that its two out-of-sample witnesses (the head, the labelled neighbours) doubt."""

    path: str
    row: int = Field(description="line in the labels CSV")
    split: str
    attribute: str
    given: str | list[str]
    suggested: str | list[str]
    score: float = Field(description="how likely the given label is wrong, 0..1 (1 - cleanlab's label quality)")
    flagged: bool = Field(description="cleanlab's confident learning calls it a label issue")
    head_given: float
    head_suggested: float
    neighbours_given: float
    neighbours_suggested: float
    neighbour_paths: list[str] = Field(default_factory=list, description="nearest labelled rows from other folds")


class DuplicateGroup(BaseModel):
    paths: list[str]
    kind: str = Field(description="identical (same bytes) or near (embedding cosine at least `similarity`)")
    similarity: float | None = None
    crosses_splits: bool
    conflicting: list[str] = Field(description="attributes whose labels differ inside the group")


class RuleBreak(BaseModel):
    """A label that breaks a rule the other rows follow ("articleType=Sandals -> subCategory=Sandal")."""

    path: str
    row: int = Field(description="line in the labels CSV")
    split: str
    attribute: str = Field(description="the attribute whose label breaks the rule")
    given: str
    expected: str = Field(description="what the rule says")
    rule: str
    support: int = Field(description="rows that follow the rule")
    rows: int = Field(description="rows the rule is about (those with the rule's first value)")


class AuditResult(BaseModel):
    suspects: list[Suspect]
    duplicates: list[DuplicateGroup]
    summary: dict[str, Any]
    rule_breaks: list[RuleBreak] = Field(default_factory=list,
                                         description="labels against a hierarchy the other labels follow")
