"""`create_app(settings)`: the FastAPI app. Errors a client can cause are answered `{"error": message}` with a
4xx status; the gallery (plain HTML/CSS/JS shipped in the package) is served at `/`."""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from mhtag.core.errors import BusyError, ImageError, MhtagError, NotFoundError
from mhtag.server.api import TooLarge, Unauthorized, WritesDisabled, router
from mhtag.server.service import Service, Settings

_logger = logging.getLogger(__name__)
STATIC = resources.files("mhtag.server") / "static"

_STATUS = [(NotFoundError, 404), (Unauthorized, 401), (WritesDisabled, 403), (BusyError, 409), (TooLarge, 413)]


def _status_of(exc: MhtagError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    if isinstance(exc, ImageError) and "limit" in exc.reason:
        return 413
    return 400


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    svc = Service(settings)  # loads the encoder and the snapshot now: the first request is not slow
    app = FastAPI(title="mhtag", summary="Multi-head image tagging and attribute search")
    app.state.service = svc
    app.include_router(router)
    largest = settings.max_upload_bytes * settings.max_files + (1 << 20)

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > largest:
            return _error(413, f"request body of {int(declared):,} bytes is over the {largest:,} byte limit")
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def gallery() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.exception_handler(MhtagError)
    async def user_error(request: Request, exc: MhtagError) -> JSONResponse:
        return _error(_status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        _logger.exception("error serving %s", request.url.path)
        return _error(500, "internal error (logged on the server)")

    return app
