"""Where an index lives: a local folder, or an object-store URI (`s3://bucket/prefix`, `gs://`, `az://`) with
Lance's `storage_options`. Every reader and writer of an index's files goes through these functions, so the
local and the remote index share one code path.

Storage options come from `MHTAG_STORAGE_OPTIONS` (a JSON object, in Lance's vocabulary: `aws_access_key_id`,
`aws_secret_access_key`, `aws_endpoint`, `aws_region`, `allow_http`, ...), so that every process of a run (uvicorn
workers, torchrun ranks) sees the same; without it Lance and Arrow read the usual cloud environment variables.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from mhtag.core.errors import MhtagError
from mhtag.core.io import atomic_write_text

STORAGE_OPTIONS_ENV = "MHTAG_STORAGE_OPTIONS"
Location = str | Path  # a local folder as a Path, an object-store URI as its string


def is_remote(db: str | Path) -> bool:
    return "://" in str(db) and not str(db).startswith("file://")


def location(db: str | Path) -> Location:
    """`db` as the index code keeps it: a Path for a folder, the URI string for object storage (a Path would
    fold the `//` of `s3://`)."""
    return str(db).rstrip("/") if is_remote(db) else Path(db)


def join(db: str | Path, name: str) -> str:
    return f"{str(db).rstrip('/')}/{name}" if is_remote(db) else str(Path(db) / name)


def storage_options() -> dict[str, str]:
    return dict(_parse_options(os.environ.get(STORAGE_OPTIONS_ENV, "")))


@lru_cache(maxsize=4)
def _parse_options(text: str) -> tuple[tuple[str, str], ...]:
    if not text.strip():
        return ()
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise MhtagError(f"{STORAGE_OPTIONS_ENV} is not JSON ({exc})") from None
    if not isinstance(options, dict) or not all(isinstance(v, str | int | bool) for v in options.values()):
        raise MhtagError(f"{STORAGE_OPTIONS_ENV} must be a JSON object of strings, e.g. "
                         '{"aws_region": "eu-west-1"}')
    return tuple((str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items())


def read_text(uri: str | Path) -> str | None:
    """The file's text, None where there is no such file."""
    if not is_remote(uri):
        p = Path(uri)
        return p.read_text() if p.is_file() else None
    fs, path = _filesystem(str(uri))
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def write_text(uri: str | Path, text: str) -> None:
    """Atomic on both: a rename locally, a single PUT on object storage."""
    if not is_remote(uri):
        atomic_write_text(uri, text)
        return
    fs, path = _filesystem(str(uri))
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def stamp(uri: str | Path) -> tuple[int, int, int] | None:
    """(modification time, size, inode) of a file, None where there is none: what changes when it is rewritten
    (object storage has no inodes: a rewrite there is a new modification time)."""
    if not is_remote(uri):
        try:
            st = os.stat(uri)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino
    from pyarrow import fs as pafs

    fs, path = _filesystem(str(uri))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return info.mtime_ns or 0, info.size or 0, 0


def list_names(uri: str | Path) -> list[str]:
    """The names in a folder (an object-store prefix); a missing one is an OSError."""
    if not is_remote(uri):
        return os.listdir(uri)
    from pyarrow import fs as pafs

    fs, path = _filesystem(str(uri))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    if not infos:
        raise FileNotFoundError(uri)
    return [i.base_name for i in infos]


def _filesystem(uri: str):
    """An Arrow file system for `uri` configured from the same storage options Lance gets."""
    from pyarrow import fs as pafs

    scheme, _, path = uri.partition("://")
    options = storage_options()
    if scheme in ("s3", "s3a") and options:
        return _s3(tuple(sorted(options.items()))), path
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, OSError) as exc:
        raise MhtagError(f"cannot open {uri}: {exc}") from None


@lru_cache(maxsize=4)
def _s3(options: tuple[tuple[str, str], ...]):
    from pyarrow import fs as pafs

    o = dict(options)
    endpoint = o.get("aws_endpoint") or o.get("endpoint")
    scheme = "http" if endpoint and endpoint.startswith("http://") else "https"
    return pafs.S3FileSystem(
        access_key=o.get("aws_access_key_id"), secret_key=o.get("aws_secret_access_key"),
        session_token=o.get("aws_session_token"), region=o.get("aws_region") or o.get("region"),
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None, scheme=scheme)
