"""The JSON API: thin routes over the library; every response is a typed result shared with the CLI."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from mhtag.catalogue.edits import confirm, set_labels, undo
from mhtag.catalogue.review import answer, review_queue
from mhtag.core.errors import MhtagError, NotFoundError
from mhtag.data.images import MAX_PIXELS, decode_image, image_header
from mhtag.index.export import export_index
from mhtag.index.filters import Source
from mhtag.index.history import shown
from mhtag.index.info import index_attributes, index_health
from mhtag.index.labels import InvalidLabel
from mhtag.index.query import Sort
from mhtag.index.search import search
from mhtag.index.uploads import add_images, delete_row
from mhtag.results import (
    Added,
    Attributes,
    Deleted,
    ErrorBody,
    Health,
    LabelChange,
    PredictResult,
    RetrainStatus,
    ReviewQueue,
    RowDetail,
    SearchHit,
    SearchResult,
)
from mhtag.server.files import INT64, original, stored_file, thumbnail
from mhtag.server.service import Service, parse_json_field

MAX_LIMIT = 500
ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody},
          404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}}


class RowFilter(BaseModel):
    """Which rows: the filters shared by search and export."""

    model_config = ConfigDict(extra="forbid")
    filters: dict[str, list[str]] = Field(default_factory=dict, description="attribute -> values (OR within, "
                                                                             "AND across attributes)")
    source: Source = Source.ANY
    min_confidence: float | None = Field(None, ge=0, le=1)
    disputed: bool = Field(False, description="only rows whose known label and prediction differ")


class SearchRequest(RowFilter):
    like_id: int | None = Field(None, description="rank by similarity to this row")
    text: str | None = Field(None, max_length=1000, description="rank by similarity to this sentence (the index's "
                                                                 "model needs a text tower)")
    sort: Sort = Field(Sort.AUTO, description="similarity (with like_id or an image), confidence, path, or changed "
                                               "(the last label change, newest first)")
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0)
    facets: bool = True


class ExportRequest(RowFilter):
    format: Literal["csv", "parquet", "jsonl"] = "csv"


EXPORT_MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "jsonl": "application/x-ndjson"}


class Unauthorized(MhtagError):
    """A write without the API key, or with a wrong one."""


class WritesDisabled(MhtagError):
    """The server was started without an API key file: it takes no writes."""


class TooLarge(MhtagError):
    """An upload over the size limit."""


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]
KEY_COOKIE = "mhtag_key"  # the gallery's copy of the key, for the requests a page makes by itself (<img>)


def _presented_key(authorization: str | None) -> str | None:
    return authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None


def _require_key(svc: Service, authorization: str | None) -> None:
    """Writes need `Authorization: Bearer <key>` (never a cookie: a page elsewhere cannot send that header)."""
    if svc.api_key is None:
        raise WritesDisabled("writes are disabled: start the server with --api-key-file to allow them")
    if not svc.key_ok(_presented_key(authorization)):
        raise Unauthorized("a write needs the API key: send `Authorization: Bearer <key>`")


def read_access(request: Request) -> None:
    """With `--private`, reads need the key too: the Authorization header, or the gallery's cookie."""
    svc: Service = request.app.state.service
    if svc.settings.private and not (svc.key_ok(_presented_key(request.headers.get("authorization")))
                                     or svc.key_ok(request.cookies.get(KEY_COOKIE))):
        raise Unauthorized("this server is private: send `Authorization: Bearer <key>`")


router = APIRouter(prefix="/api", responses=ERRORS, dependencies=[Depends(read_access)])


@dataclass
class Upload:
    name: str
    data: bytes
    pixels: int


async def _read_uploads(svc: Service, files: list[UploadFile]) -> list[Upload]:
    """The uploaded bytes, under the size limit, each an image by its header whose pixels fit the per-image limit
    and, all together, the request's pixel budget: checked before anything is decoded."""
    if not files:
        raise MhtagError("no image was sent: use a multipart field named `image`")
    if len(files) > svc.settings.max_files:
        raise MhtagError(f"{len(files)} images in one request; at most {svc.settings.max_files}")
    limit, budget = svc.settings.max_upload_bytes, svc.settings.max_request_pixels
    out, total = [], 0
    for i, f in enumerate(files):
        data = await f.read(limit + 1)
        name = f.filename or f"upload {i + 1}"
        if len(data) > limit:
            raise TooLarge(f"{name}: larger than the {limit / 1024 / 1024:g} MB upload limit")
        width, height = image_header(data, name)
        if width * height > MAX_PIXELS:
            raise TooLarge(f"{name}: {width}x{height} pixels is over the {MAX_PIXELS:,} limit")
        total += width * height
        if total > budget:
            raise TooLarge(f"the images of this request hold {total:,}+ pixels, over the {budget:,} a request may "
                           "decode; send fewer or smaller images")
        out.append(Upload(name, data, width * height))
    return out


def _decoded(svc: Service, uploads: list[Upload]) -> list:
    """Decoded uploads (JPEGs straight at the model's input scale); runs in a worker thread."""
    predictor = svc.predictor
    config = predictor.meta.data_config if predictor.meta is not None else predictor.encoder.data_config
    h, w = config["input_size"][-2:]
    return [decode_image(u.data, u.name, draft_size=(w, h)) for u in uploads]


async def _in_model_thread(svc: Service, fn, *args):
    """Model work runs off the event loop, a bounded number at a time, so searches are not blocked by it."""
    if svc.model_limiter is None:  # made here: a limiter belongs to the running event loop
        svc.model_limiter = anyio.CapacityLimiter(svc.settings.model_threads)
    return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=svc.model_limiter)


def _row_id(rid: int) -> int:
    """A row id is a signed 64-bit integer; anything outside names no row."""
    if not INT64[0] <= rid <= INT64[1]:
        raise NotFoundError(f"no row with id {rid}")
    return rid


def _relative(hits: list[SearchHit]) -> list[SearchHit]:
    """Hits as the API shows them: paths under the indexed folder, not the server's absolute paths."""
    for hit in hits:
        hit.path = hit.rel
    return hits


@router.get("/health", response_model=Health)
def health(svc: ServiceDep) -> Health:
    h = index_health(svc.db)
    return h.model_copy(update={"model": Path(h.model).parent.name if h.model else None})


@router.get("/attributes", response_model=Attributes)
def attributes(svc: ServiceDep) -> Attributes:
    return index_attributes(svc.db)


def _json(result: BaseModel) -> Response:
    """A typed result serialised once (FastAPI would validate it again against the response model)."""
    return Response(result.model_dump_json(), media_type="application/json")


def _search(svc: Service, query: SearchRequest, vector=None) -> SearchResult:
    result = search(svc.db, query.filters, limit=query.limit, min_confidence=query.min_confidence,
                    source=query.source, offset=query.offset, like_id=query.like_id, facets=query.facets,
                    disputed=query.disputed, vector=vector, sort=query.sort, text=query.text)
    _relative(result.results)
    return result


@router.post("/search", response_model=SearchResult)
def search_rows(query: SearchRequest, svc: ServiceDep) -> Response:
    return _json(_search(svc, query))


@router.post("/export", response_class=FileResponse,
             responses={200: {"content": {m: {} for m in EXPORT_MEDIA.values()},
                              "description": "every matched row: answer, label, prediction, confidence"}})
def export_rows(query: ExportRequest, svc: ServiceDep) -> FileResponse:
    """Every matched row as a download (written to a private temporary folder, removed once sent)."""
    folder = Path(tempfile.mkdtemp(prefix="mhtag-export-"))
    out = folder / f"mhtag-export.{query.format}"
    try:
        export_index(out, svc.db, query.filters, source=query.source, min_confidence=query.min_confidence,
                     disputed=query.disputed, relative_paths=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(out, media_type=EXPORT_MEDIA[query.format], filename=out.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post("/search/image", response_model=SearchResult)
async def search_by_image(svc: ServiceDep, image: Annotated[UploadFile, File(description="the query image")],
                          query: Annotated[str | None, Form(description="JSON of /api/search's body")] = None
                          ) -> SearchResult:
    try:
        body = SearchRequest.model_validate(parse_json_field(query, "query") or {})
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
    uploads = await _read_uploads(svc, [image])
    images = await _in_model_thread(svc, _decoded, svc, uploads)
    vector = await svc.embed(images)  # one forward pass with the images of other requests
    return await anyio.to_thread.run_sync(lambda: _search(svc, body, vector))


@router.post("/predict", response_model=PredictResult)
async def predict_images(svc: ServiceDep, image: Annotated[list[UploadFile], File(description="one or more images")]
                         ) -> PredictResult:
    uploads = await _read_uploads(svc, image)
    images = await _in_model_thread(svc, _decoded, svc, uploads)
    # one forward pass and one neighbour search with the images of other requests
    return PredictResult(predictions=await svc.predict(images, [u.name for u in uploads]))


@router.get("/rows/{rid}", response_model=RowDetail)
def row(rid: int, svc: ServiceDep) -> RowDetail:
    detail = svc.predictor.row(_row_id(rid))
    return detail.model_copy(update={"path": detail.rel})


@router.get("/images/{rid}", response_class=Response)
def image_file(rid: int, svc: ServiceDep) -> Response:
    data, media = original(stored_file(svc.db, _row_id(rid)))
    return Response(data, media_type=media)


@router.get("/images/{rid}/thumb", response_class=Response)
def image_thumbnail(rid: int, svc: ServiceDep) -> Response:
    data = thumbnail(stored_file(svc.db, _row_id(rid)))
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.post("/images", response_model=Added)
async def add(svc: ServiceDep, image: Annotated[list[UploadFile], File(description="images to index")],
              labels: Annotated[str | None, Form(description="JSON: one {attribute: value} per image, or one for "
                                                              "all; a tag group's value is a list of tags")] = None,
              add_values: Annotated[bool, Form(description="accept label values the attribute never had")] = False,
              authorization: Annotated[str | None, Header()] = None) -> Added:
    _require_key(svc, authorization)
    uploads = await _read_uploads(svc, image)
    given = parse_json_field(labels, "labels")
    if isinstance(given, dict):
        given = [given] * len(uploads)
    if given is not None and not (isinstance(given, list) and all(isinstance(g, dict) for g in given)):
        raise InvalidLabel("labels must be a JSON object, or a list of one object per image")
    encoder = svc.predictor.encoder
    return await _in_model_thread(svc, add_images, svc.db, [u.data for u in uploads], encoder, given, add_values)


@router.delete("/images/{rid}", response_model=Deleted)
def delete(rid: int, svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> Deleted:
    _require_key(svc, authorization)
    return delete_row(svc.db, _row_id(rid))


# ---------------------------------------------------------------- the catalogue: labels, review, retraining


class LabelEdit(BaseModel):
    """Set or clear a row's labels: `{attribute: value}` (a string, a list of tags for a tag group, null to clear)."""

    model_config = ConfigDict(extra="forbid")
    labels: dict[str, Any] = Field(default_factory=dict)
    add_values: bool = Field(False, description="accept a value (or an attribute) the index never had")
    confirm: list[str] = Field(default_factory=list, description="attributes whose current label a person checked "
                                                                   "and keeps (recorded; they leave the review queue)")
    source: Literal["gallery", "api"] = "api"


@router.patch("/rows/{rid}", response_model=RowDetail)
def edit_row(rid: int, body: LabelEdit, svc: ServiceDep,
             authorization: Annotated[str | None, Header()] = None) -> RowDetail:
    _require_key(svc, authorization)
    set_labels(svc.db, _row_id(rid), body.labels, body.source, body.add_values)
    for attribute in body.confirm:
        confirm(svc.db, _row_id(rid), attribute, body.source)
    return row(rid, svc)


@router.post("/changes/{change}/undo", response_model=LabelChange)
def undo_change(change: int, svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> LabelChange:
    _require_key(svc, authorization)
    made = undo(svc.db, change)
    return shown(made, svc.predictor.meta.attribute(made.attribute).multi)


@router.get("/review", response_model=ReviewQueue)
def review(svc: ServiceDep, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
           offset: Annotated[int, Query(ge=0)] = 0, attribute: str | None = None) -> ReviewQueue:
    return review_queue(svc.db, limit, offset, attribute)


class ReviewAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    row: int = Field(description="the row id (a string in JSON)")
    attribute: str
    accept: bool = Field(description="true: set the suggestion; false: keep the label")


@router.post("/review", response_model=RowDetail)
def answer_review(body: ReviewAnswer, svc: ServiceDep,
                  authorization: Annotated[str | None, Header()] = None) -> RowDetail:
    _require_key(svc, authorization)
    answer(svc.db, _row_id(body.row), body.attribute, body.accept)
    return row(body.row, svc)


@router.get("/retrain", response_model=RetrainStatus)
def retrain_status(svc: ServiceDep) -> RetrainStatus:
    return svc.retraining.status


@router.post("/retrain", response_model=RetrainStatus)
def retrain_start(svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> RetrainStatus:
    """Retrain the heads on the catalogue's current labels in the background; the index switches to them when done
    (`GET /api/retrain` tells how it goes)."""
    _require_key(svc, authorization)
    return svc.retraining.start()
