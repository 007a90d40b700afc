"""`search --engine lance` (LanceDB's own indexes, nothing loaded whole) answers what the in-memory engine answers."""

import numpy as np
import pytest

from mhtag.index.ann import build_ann
from mhtag.index.meta import require_meta
from mhtag.index.search import search
from mhtag.index.sql import filter_sql
from mhtag.index.synthetic import synthetic_vectors, write_synthetic_index

QUERIES = [
    dict(filters={"colour": ["red", "blue"]}),
    dict(filters={"colour": ["red", "blue", "green"], "shape": ["circle", "square"]}, source="pred",
         min_confidence=0.2),
    dict(filters={"marks": ["dot"]}, source="label"),
    dict(filters={"size": ["large"]}, disputed=True),
    dict(where="width = 32", filters={"background": ["light"]}),
    dict(filters={"shape": ["circle"]}, like_id="first", limit=7, offset=3),
    dict(sort="path", limit=7, offset=2),
    dict(filters={"colour": ["red"]}, sort="changed", limit=5),
    dict(like_id="first", sort="confidence", limit=4),
]


def _ask(db, q, engine, first):
    q = {**q, "like_id": first if q.get("like_id") == "first" else q.get("like_id")}
    return search(db, facets=True, engine=engine, **q)


@pytest.mark.parametrize("q", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
def test_lance_engine_answers_what_the_memory_engine_answers(indexed, q):
    db, _ = indexed
    first = search(db, limit=1).results[0].id
    memory, lance = _ask(db, q, "memory", first), _ask(db, q, "lance", first)
    assert lance.matched == memory.matched > 0
    assert lance.facets == memory.facets
    assert len(lance.results) == len(memory.results) == min(q.get("limit", 20), memory.matched - q.get("offset", 0))
    assert [r.score for r in lance.results] == pytest.approx([r.score for r in memory.results], abs=1e-4)
    assert [r.id for r in lance.results] == [r.id for r in memory.results]  # ties in table order on both


def test_filter_values_are_quoted_never_pasted(indexed):
    db, _ = indexed
    meta = require_meta(db)
    meta.attribute("colour").label_values.append("it's")
    sql = filter_sql(meta, {"colour": ["it's"]}, "label")
    assert sql == "(label_colour IN ('it''s'))"


def test_ivf_pq_search_returns_exactly_limit_rows_down_to_a_tenth_of_a_percent(tmp_path, monkeypatch):
    from mhtag.index import lancedb_engine

    monkeypatch.setattr(lancedb_engine, "EXACT_MAX_MATCHES", 100)  # 50% goes through IVF_PQ, 0.1% exact
    rows, dim = 6000, 128
    values = {"half": ["a", "b"], "rare": [f"r{i}" for i in range(1000)]}  # 50% and 0.1% (6 rows) per value
    write_synthetic_index(tmp_path, rows, dim, values)
    report = build_ann(tmp_path, require_meta(tmp_path))
    assert report.vector_index == "IVF_PQ" and {"rid", "label_half", "label_rare"} <= set(report.scalar_indexes)
    vectors = np.concatenate([x for _, x in synthetic_vectors(rows, dim)])
    rng = np.random.default_rng(3)
    recalls = []
    for q in vectors[rng.choice(rows, 10, replace=False)]:
        for filters, k in (({"half": ["a"]}, 10), ({"rare": ["r7"]}, 10)):
            got = search(tmp_path, filters, vector=q, limit=k, engine="lance", source="label")
            exact = search(tmp_path, filters, vector=q, limit=k, engine="memory", source="label")
            assert len(got.results) == min(k, exact.matched) and got.matched == exact.matched
            recalls.append(len({r.id for r in got.results} & {r.id for r in exact.results}) / len(exact.results))
    assert np.mean(recalls) >= 0.9


def test_cli_builds_the_ann_indexes_and_both_engines_print_the_same_json(demo, tiny_run, tmp_path):
    from typer.testing import CliRunner

    from mhtag.cli.app import app

    db = str(tmp_path / "db")
    out = CliRunner().invoke(app, ["index", str(demo.parent), "--db", db, "--model", str(tiny_run), "--labels",
                                   str(demo), "--workers", "0", "--build-ann"])
    assert out.exit_code == 0, out.output
    assert "ANN: vector index none (120 rows" in out.output and "scalar indexes on" in out.output
    answers = [CliRunner().invoke(app, ["search", "--db", db, "--colour", "red", "--size", "large", "--json",
                                        "--engine", engine]) for engine in ("memory", "lance")]
    assert all(a.exit_code == 0 for a in answers)
    assert answers[0].output == answers[1].output and '"matched"' in answers[0].output
