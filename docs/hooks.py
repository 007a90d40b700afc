"""MkDocs hook: the API page lists `mhtag.__all__` as it is, so the Python API documented is the one that exists."""

from __future__ import annotations

import mhtag

MARKER = "<!-- the public API, one entry per name of mhtag.__all__ -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    entries = [f"::: {mhtag._EXPORTS[name]}.{name}" for name in mhtag.__all__]
    return markdown.replace(MARKER, "\n\n".join(entries))
