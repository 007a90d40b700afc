"""The JSON API: thin routes over the library; every response is a typed result shared with the CLI."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from mhtag.core.errors import ImageError, MhtagError, NotFoundError
from mhtag.data.images import decode_image
from mhtag.index.build import add_images, delete_row
from mhtag.index.export import export_index
from mhtag.index.search import Source, index_attributes, index_health, search
from mhtag.index.store import snapshot
from mhtag.results import (
    Added,
    Attributes,
    Deleted,
    ErrorBody,
    Health,
    PredictResult,
    RowDetail,
    SearchResult,
)
from mhtag.server.service import Service, parse_json_field

MAX_LIMIT = 500
ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody},
          404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}}

router = APIRouter(prefix="/api", responses=ERRORS)


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


def _require_key(svc: Service, authorization: str | None) -> None:
    if svc.api_key is None:
        raise WritesDisabled("writes are disabled: start the server with --api-key-file to allow them")
    token = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
    if not svc.key_ok(token):
        raise Unauthorized("a write needs the API key: send `Authorization: Bearer <key>`")


async def _read_uploads(svc: Service, files: list[UploadFile]) -> list[bytes]:
    """The uploaded bytes, each checked to be a usable image under the size and pixel limits."""
    if not files:
        raise MhtagError("no image was sent: use a multipart field named `image`")
    if len(files) > svc.settings.max_files:
        raise MhtagError(f"{len(files)} images in one request; at most {svc.settings.max_files}")
    limit = svc.settings.max_upload_bytes
    out = []
    for f in files:
        data = await f.read(limit + 1)
        name = f.filename or "upload"
        if len(data) > limit:
            raise TooLarge(f"{name}: larger than the {limit / 1024 / 1024:g} MB upload limit")
        decode_image(data, name)  # not an image, empty, truncated, or over the pixel limit: refused here
        out.append(data)
    return out


async def _in_model_thread(svc: Service, fn, *args):
    """Model work runs off the event loop, a bounded number at a time, so searches are not blocked by it."""
    if svc.model_limiter is None:  # made here: a limiter belongs to the running event loop
        svc.model_limiter = anyio.CapacityLimiter(svc.settings.model_threads)
    return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=svc.model_limiter)


@router.get("/health", response_model=Health)
def health(svc: ServiceDep) -> Health:
    return index_health(svc.db)


@router.get("/attributes", response_model=Attributes)
def attributes(svc: ServiceDep) -> Attributes:
    return index_attributes(svc.db)


def _json(result: BaseModel) -> Response:
    """A typed result serialised once (FastAPI would validate it again against the response model)."""
    return Response(result.model_dump_json(), media_type="application/json")


@router.post("/search", response_model=SearchResult)
def search_rows(query: SearchRequest, svc: ServiceDep) -> Response:
    return _json(search(svc.db, query.filters, limit=query.limit, min_confidence=query.min_confidence,
                        source=query.source, offset=query.offset, like_id=query.like_id, facets=query.facets,
                        disputed=query.disputed))


@router.post("/export", response_class=FileResponse,
             responses={200: {"content": {m: {} for m in EXPORT_MEDIA.values()},
                              "description": "every matched row: answer, label, prediction, confidence"}})
def export_rows(query: ExportRequest, svc: ServiceDep) -> FileResponse:
    """Every matched row as a download (written to a private temporary folder, removed once sent)."""
    folder = Path(tempfile.mkdtemp(prefix="mhtag-export-"))
    out = folder / f"mhtag-export.{query.format}"
    try:
        export_index(out, svc.db, query.filters, source=query.source, min_confidence=query.min_confidence,
                     disputed=query.disputed)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(out, media_type=EXPORT_MEDIA[query.format], filename=out.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post("/search/image", response_model=SearchResult)
async def search_by_image(svc: ServiceDep, image: Annotated[UploadFile, File(description="the query image")],
                          query: Annotated[str | None, Form(description="JSON of /api/search's body")] = None
                          ) -> SearchResult:
    body = SearchRequest.model_validate(parse_json_field(query, "query") or {})
    (data,) = await _read_uploads(svc, [image])
    enc = svc.predictor.encoder
    vector, _ = await _in_model_thread(svc, enc.encode_images, [decode_image(data, image.filename or "upload")])
    return await anyio.to_thread.run_sync(lambda: search(
        svc.db, body.filters, limit=body.limit, min_confidence=body.min_confidence, source=body.source,
        offset=body.offset, vector=vector, facets=body.facets, disputed=body.disputed))


@router.post("/predict", response_model=PredictResult)
async def predict_images(svc: ServiceDep, image: Annotated[list[UploadFile], File(description="one or more images")]
                         ) -> PredictResult:
    datas = await _read_uploads(svc, image)
    images = [decode_image(d, f.filename or "upload") for d, f in zip(datas, image, strict=True)]
    names = [f.filename or f"upload {i + 1}" for i, f in enumerate(image)]
    return await _in_model_thread(svc, svc.predictor.predict_images, images, names)


@router.get("/rows/{rid}", response_model=RowDetail)
def row(rid: int, svc: ServiceDep) -> RowDetail:
    return svc.predictor.row(rid)


def _stored_file(svc: Service, rid: int) -> dict:
    """The path the index holds for a row id (from the in-memory snapshot): the only way a file is opened."""
    snap = snapshot(svc.db)
    pos = snap.position(rid)
    if pos is None:
        raise NotFoundError(f"no row with id {rid}")
    return {"path": snap.rows.column("path")[pos].as_py(), "id": snap.rows.column("id")[pos].as_py()}


@router.get("/images/{rid}", response_class=FileResponse)
def original(rid: int, svc: ServiceDep):
    stored = _stored_file(svc, rid)
    try:
        return FileResponse(stored["path"])
    except OSError as exc:
        raise NotFoundError(f"the file of row {rid} is gone") from exc


@router.get("/images/{rid}/thumb", response_class=Response)
def thumbnail(rid: int, svc: ServiceDep) -> Response:
    stored = _stored_file(svc, rid)
    try:
        data = svc.thumbnail(stored["path"], stored["id"])
    except ImageError as exc:
        raise NotFoundError(f"the file of row {rid} cannot be shown ({exc.reason})") from exc
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.post("/images", response_model=Added)
async def add(svc: ServiceDep, image: Annotated[list[UploadFile], File(description="images to index")],
              labels: Annotated[str | None, Form(description="JSON: one {attribute: value} per image, or one for "
                                                              "all")] = None,
              authorization: Annotated[str | None, Header()] = None) -> Added:
    _require_key(svc, authorization)
    datas = await _read_uploads(svc, image)
    given = parse_json_field(labels, "labels")
    if isinstance(given, dict):
        given = [given] * len(datas)
    if given is not None and not (isinstance(given, list) and all(isinstance(g, dict) for g in given)):
        raise MhtagError("labels must be a JSON object, or a list of one object per image")
    return await _in_model_thread(svc, add_images, svc.db, datas, svc.predictor.encoder, given)


@router.delete("/images/{rid}", response_model=Deleted)
def delete(rid: int, svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> Deleted:
    _require_key(svc, authorization)
    return delete_row(svc.db, rid)
