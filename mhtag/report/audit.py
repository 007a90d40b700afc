"""The audit as a page a person can judge at a glance: per attribute, the top suspects with their given and
suggested labels, beside their nearest labelled neighbours; then the labels that break a rule the other rows
follow, and the duplicate groups."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from mhtag.core.errors import ImageError
from mhtag.core.io import atomic_write_text
from mhtag.data.images import load_image
from mhtag.data.schema import join_tags
from mhtag.results import AuditResult, Suspect

THUMB = 112
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#1d2329}
.s{display:flex;gap:14px;align-items:flex-start;border-bottom:1px solid #e3e7ee;padding:8px 0}
.s figure{margin:0;text-align:center;font-size:11px;width:118px}.s img{max-width:112px;max-height:112px}
.given{color:#b3261e;font-weight:600}.sugg{color:#1b7a3a;font-weight:600}.n{opacity:.85}
.d{font-size:12px;margin:2px 0}"""


def _thumb(root: Path, rel: str) -> str:
    try:
        img = load_image(root / rel)
    except ImageError:
        return ""
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _text(v: str | list[str]) -> str:
    return html.escape(join_tags(v) if isinstance(v, list) else v)


def _figure(root: Path, rel: str, caption: str) -> str:
    return f'<figure><img src="{_thumb(root, rel)}" alt=""><figcaption>{caption}</figcaption></figure>'


def _suspect(root: Path, s: Suspect, labels_of: dict[str, str]) -> str:
    head = (f'<div><b>{html.escape(s.path)}</b> (row {s.row}, {s.split})<br>given <span class="given">'
            f'{_text(s.given)}</span> &rarr; suggested <span class="sugg">{_text(s.suggested)}</span><br>'
            f'score {s.score:.3f}{" · flagged" if s.flagged else ""}<br>head {s.head_given:.2f} vs '
            f'{s.head_suggested:.2f} · neighbours {s.neighbours_given:.2f} vs {s.neighbours_suggested:.2f}</div>')
    nbrs = "".join(_figure(root, p, f'<span class="n">{html.escape(labels_of.get(p, ""))}</span>')
                   for p in s.neighbour_paths)
    return f'<div class="s">{_figure(root, s.path, "")}{head}{nbrs}</div>'


def write_audit_html(result: AuditResult, root: Path, path: Path, per_attribute: int = 30) -> Path:
    """`root`: the folder the labels' paths are relative to."""
    parts = [f"<h1>mhtag audit</h1><p>{html.escape(str(result.summary))}</p>"]
    for name in result.summary.get("attributes", []):
        mine = [s for s in result.suspects if s.attribute == name]
        labels_of = {s.path: _text(s.given) for s in mine}
        parts.append(f"<h2>{html.escape(name)}: top {min(per_attribute, len(mine))} suspects</h2>")
        parts += [_suspect(root, s, labels_of) for s in mine[:per_attribute]]
    parts.append(f"<h2>Labels against a rule the other rows follow ({len(result.rule_breaks)})</h2>")
    parts += [f'<div class="s">{_figure(root, b.path, "")}<div><b>{html.escape(b.path)}</b> (row {b.row}, '
              f'{b.split})<br>{html.escape(b.attribute)} <span class="given">{html.escape(b.given)}</span> &rarr; '
              f'<span class="sugg">{html.escape(b.expected)}</span><br>{html.escape(b.rule)}: {b.support} of '
              f'{b.rows} rows</div></div>' for b in result.rule_breaks[:200]]
    parts.append(f"<h2>Duplicate groups ({len(result.duplicates)})</h2>")
    for g in result.duplicates[:200]:
        what = f"{g.kind}{'' if g.similarity is None else f' (cosine ≥ {g.similarity})'}"
        flags = ", ".join(filter(None, ["crosses splits" if g.crosses_splits else "",
                                        f"labels differ: {', '.join(g.conflicting)}" if g.conflicting else ""]))
        parts.append(f'<p class="d">{html.escape(what)}{": " + html.escape(flags) if flags else ""}: '
                     f'{html.escape(", ".join(g.paths))}</p>')
    page = f"<!doctype html><meta charset='utf-8'><title>mhtag audit</title><style>{STYLE}</style>" + "\n".join(parts)
    return atomic_write_text(path, page)
