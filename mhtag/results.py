"""Typed results: one definition of each answer, printed by the CLI's `--json` and returned by the API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Failure(BaseModel):
    """An input that could not be used, with the reason."""

    path: str
    reason: str


class Fused(BaseModel):
    label: str | list[str]  # a tag group answers with a list of tags
    confidence: float


class AttributeAnswer(BaseModel):
    head: list[tuple[str, float]] = Field(description="the head's top 3: [label, probability]")
    neighbours: list[tuple[str, float]] = Field(description="labelled neighbours' top 3: [label, share]")
    fused: Fused
    agree: bool | None = Field(description="head and neighbours name the same top label (null: one is absent)")


class ImagePrediction(BaseModel):
    path: str
    attributes: dict[str, AttributeAnswer]


class PredictResult(BaseModel):
    predictions: list[ImagePrediction] = Field(default_factory=list)
    failed: list[Failure] = Field(default_factory=list)


class SearchHit(BaseModel):
    """One row: its id, path and score, then per attribute `<a>` (the answer under the chosen source),
    `<a>_label`, `<a>_pred` and `<a>_confidence` where the index has them."""

    model_config = ConfigDict(extra="allow")
    id: int
    path: str
    score: float


class SearchResult(BaseModel):
    matched: int
    results: list[SearchHit] = Field(default_factory=list)
    facets: dict[str, dict[str, int]] = Field(default_factory=dict,
                                              description="per attribute, matched rows per value")


class IndexReport(BaseModel):
    db: str
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    pruned: int = 0
    vanished: int = 0  # rows whose file is gone, kept because prune was off
    failed: list[Failure] = Field(default_factory=list)
    unmatched_labels: int = 0  # rows of the labels CSV that match no indexed image
    seconds: float = 0.0
    has_heads: bool = False
    fusion: dict[str, float] = Field(default_factory=dict)
    ids: list[int] = Field(default_factory=list)  # row ids written by this run

    @property
    def images_per_second(self) -> float:
        return (self.added + self.updated) / self.seconds if self.seconds else 0.0
