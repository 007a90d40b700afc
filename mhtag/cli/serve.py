"""`mhtag serve`: the JSON API and the web gallery over an index (uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mhtag.cli.app import Db, app, prepare


@app.command()
def serve(db: Db = None,
          model: Annotated[Optional[Path], typer.Option(help="trained run (default: the index's model)")] = None,
          host: Annotated[str, typer.Option(help="address to bind; other than localhost exposes the service")
                          ] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
          api_key_file: Annotated[Optional[Path], typer.Option(help="file holding the key that writes need; "
                                                                    "without one, writes are refused")] = None,
          max_upload_mb: Annotated[float, typer.Option(min=0.001, help="largest accepted upload")] = 20.0) -> None:
    """Serve the JSON API (/api, docs at /docs) and the web gallery (/) over an index."""
    prepare()
    import uvicorn

    from mhtag.index.store import DEFAULT_DB
    from mhtag.server.app import Settings, create_app

    settings = Settings(db=db or DEFAULT_DB, model=model, api_key_file=api_key_file,
                        max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    api = create_app(settings)
    typer.echo(f"serving {settings.db} at http://{host}:{port}/ (API docs: /docs)", err=True)
    uvicorn.run(api, host=host, port=port, log_level="warning")
