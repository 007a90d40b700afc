"""`mhtag serve`: the JSON API and the web gallery over an index (uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import Db, Model, app, example, prepare, threads_option


@app.command(epilog=example("mhtag serve --db indexes/shop",
                            "mhtag serve --db indexes/shop --host 0.0.0.0 --api-key-file key.txt --private"))
def serve(db: Db = None, model: Model = None,
          host: Annotated[str, typer.Option(help="address to bind; other than localhost exposes the service")
                          ] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
          api_key_file: Annotated[Optional[Path], typer.Option(help="file holding the key that writes need; "
                                                                    "without one, writes are refused")] = None,
          private: Annotated[bool, typer.Option("--private", help="reads need the key too (the gallery asks for "
                                                                  "it once)")] = False,
          max_upload_mb: Annotated[float, typer.Option(min=0.001, help="largest accepted upload")] = 20.0,
          workers: Annotated[int, typer.Option(min=1, help="server processes, each with its own copy of the "
                                                          "index in memory: up to one per core")] = 1) -> None:
    """Serve the JSON API (/api, docs at /docs) and the web gallery (/) over an index."""
    prepare()
    import uvicorn

    from mhtag.index.store import DEFAULT_DB
    from mhtag.server.app import Settings, create_app
    from mhtag.server.service import check_settings

    settings = Settings(db=db or DEFAULT_DB, model=model, api_key_file=api_key_file, private=private, host=host,
                        max_upload_bytes=int(max_upload_mb * 1024 * 1024), threads=threads_option())
    check_settings(settings)  # a bad index or key file fails here, in one line, before any worker starts
    if not settings.loopback and not private:
        typer.echo(f"warning: {host} is reachable from other machines, and anyone who reaches it can search, view "
                   "and export every image; add --private (with --api-key-file) to require the key for reads",
                   err=True)
    typer.echo(f"serving {settings.db} at http://{host}:{port}/ with {workers} worker(s) (API docs: /docs)",
               err=True)
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    os.environ.update(settings.to_env())
    uvicorn.run("mhtag.server.app:create_app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level="warning")
