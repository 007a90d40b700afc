"""`create_app(settings)`: the FastAPI app. Errors a client can cause are answered `{"error": message}` with a
4xx status; the gallery (plain HTML/CSS/JS shipped in the package) is served at `/`."""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mhtag.core.errors import BusyError, ImageError, MhtagError, NotFoundError
from mhtag.index.guard import IndexUnavailable, index_problem
from mhtag.index.labels import InvalidLabel
from mhtag.server.api import TooLarge, Unauthorized, WritesDisabled, router
from mhtag.server.service import LOOPBACK_HOST_HEADERS, Service, Settings

_logger = logging.getLogger(__name__)
STATIC = resources.files("mhtag.server") / "static"

_STATUS = [(NotFoundError, 404), (Unauthorized, 401), (WritesDisabled, 403), (BusyError, 409), (TooLarge, 413),
           (InvalidLabel, 422), (IndexUnavailable, 503)]


def _status_of(exc: MhtagError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    if isinstance(exc, ImageError) and "limit" in exc.reason:
        return 413
    return 400


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """Refuses a request body over `largest` bytes, declared (answered before it is read) or streamed, with the
    API's JSON error. A plain ASGI middleware: no per-request task as `@app.middleware` makes. (FastAPI's own
    `max_body_size` answers a declared one in plain text.)"""

    def __init__(self, app: ASGIApp, largest: int):
        self.app, self.largest = app, largest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.largest:
            return await self._refused()(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.largest:
                raise HTTPException(413, self._message())  # FastAPI lets an HTTPException out of body parsing
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body is over the {self.largest:,} byte limit"

    def _refused(self) -> JSONResponse:
        return _error(413, self._message())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    svc = Service(settings)  # loads the encoder and the snapshot now: the first request is not slow
    app = FastAPIOffline(title="mhtag", summary="Multi-head image tagging and attribute search")
    app.state.service = svc
    app.include_router(router)
    app.add_middleware(BodyLimit, largest=settings.max_upload_bytes * settings.max_files + (1 << 20))
    if settings.loopback:  # a page on another site that rebinds its name to 127.0.0.1 names its own Host
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOST_HEADERS)

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
        problem = index_problem(exc, svc.db)  # a damaged table or a full disk: said, not a bare 500
        if problem is not None:
            return _error(503, str(problem))
        _logger.exception("error serving %s", request.url.path)
        return _error(500, "internal error (logged on the server)")

    return app


def create_app_from_env() -> FastAPI:
    """The factory each of uvicorn's worker processes calls (`mhtag serve --workers N`): the same process setup
    as the CLI's, then the app."""
    from mhtag.core.runtime import setup
    from mhtag.index.vectors import setup_faiss

    settings = Settings.from_env()
    setup_faiss(setup(settings.threads, load_torch=False))  # a worker that only searches never loads torch
    return create_app(settings)
