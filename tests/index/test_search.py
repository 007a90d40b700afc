import json

import pytest
from typer.testing import CliRunner

from mhtag import cli
from mhtag.core.errors import MhtagError
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.search import search as _search
from mhtag.index.store import open_table, read_columns


def search(*a, **kw):
    """The library's search, its hits as plain dicts."""
    r = _search(*a, **kw)
    r.results = [h.model_dump() for h in r.results]
    return r


def _truth(db):
    return read_columns(open_table(db), ["path", "label_colour", "label_shape", "pred_colour", "conf_colour",
                                         "label_marks"]).to_pylist()


def test_filters_and_across_attributes_or_within_one(indexed):
    db, _ = indexed
    rows = _truth(db)
    r = search(db, [("colour", "red"), ("colour", "blue"), ("shape", "circle")], source="label", limit=500)
    expect = {x["path"] for x in rows if x["label_colour"] in ("red", "blue") and x["label_shape"] == "circle"}
    assert r.matched == len(expect) and {x["path"] for x in r.results} == expect
    tags = search(db, [("marks", "dot")], source="label", limit=500)
    assert tags.matched == sum("|dot|" in x["label_marks"] for x in rows)


def test_names_and_values_are_case_insensitive_and_unknown_ones_explained(indexed):
    db, _ = indexed
    assert search(db, [("COLOUR", "Red")], limit=1).matched == search(db, [("colour", "red")], limit=1).matched
    with pytest.raises(MhtagError, match="unknown attribute 'color'.*Did you mean 'colour'"):
        search(db, [("color", "red")])
    with pytest.raises(MhtagError, match="unknown value 'reed' for colour; valid values: blue, green, red, "
                                         "yellow. Did you mean 'red'"):
        search(db, [("colour", "reed")])


def test_pred_source_and_min_confidence(indexed):
    db, _ = indexed
    rows = _truth(db)
    r = search(db, [("colour", "green")], source="pred", min_confidence=0.5, limit=500)
    expect = {x["path"] for x in rows if x["pred_colour"] == "green" and x["conf_colour"] >= 0.5}
    assert {x["path"] for x in r.results} == expect
    assert [x["colour_confidence"] for x in r.results] == sorted(x["colour_confidence"] for x in r.results)[::-1]


def test_fewer_matches_than_limit_returns_them_all_and_like_returns_exactly_limit(indexed, demo):
    db, _ = indexed
    few = search(db, [("colour", "red"), ("shape", "square"), ("size", "small")], source="label", limit=100)
    assert 0 < few.matched < 100 and len(few.results) == few.matched
    like = demo.parent / "images" / "00000.png"
    r = search(db, [("background", "dark")], like=like, limit=7, source="label")
    assert r.matched >= 7 and len(r.results) == 7
    assert all(x["background_label"] == "dark" for x in r.results)
    assert [x["score"] for x in r.results] == sorted((x["score"] for x in r.results), reverse=True)
    unfiltered = search(db, like=like, limit=3)
    assert unfiltered.results[0]["path"] == str(like.resolve()) and unfiltered.results[0]["score"] == pytest.approx(1)


def test_filter_values_with_quotes_and_sql_are_just_values(demo, tiny_run, tmp_path):
    evil = ["it's", "x' OR 1=1 --", 'say "hi"; DROP TABLE images']
    lines = demo.read_text().splitlines()
    out = [lines[0] + ",note"] + [line + "," + '"' + evil[i % 3].replace('"', '""') + '"'
                                  for i, line in enumerate(lines[1:])]
    csv = demo.parent / "evil.csv"
    csv.write_text("\n".join(out) + "\n")
    db = tmp_path / "db"
    index_images(demo.parent, db, model=tiny_run, labels=csv, options=IndexOptions(workers=0))
    for i, value in enumerate(evil):
        r = search(db, [("note", value)], source="label", limit=500)
        assert r.matched == len(range(i, 120, 3)) and all(x["note"] == value for x in r.results)
    assert open_table(db).count_rows() == 120


def test_user_where_is_anded(indexed):
    db, _ = indexed
    r = search(db, [("colour", "red")], where="width = 32", source="label", limit=500)
    assert r.matched == search(db, [("colour", "red")], source="label", limit=500).matched
    assert search(db, [("colour", "red")], where="width = 31", source="label").matched == 0
    with pytest.raises(MhtagError, match="could not be evaluated"):
        search(db, where="no_such_column = 1")


def test_cli_search_json_and_sheet(indexed, tmp_path):
    db, _ = indexed
    runner = CliRunner()
    res = runner.invoke(cli.app, ["search", "--db", str(db), "--Colour", "red", "--shape=circle", "--limit", "2",
                                  "--json", "--sheet", str(tmp_path / "sheet.jpg")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"matched", "ranked_by", "results", "facets"} and len(out["results"]) == 2
    assert {"id", "path", "score", "colour", "shape", "marks"} <= set(out["results"][0])
    assert (tmp_path / "sheet.jpg").stat().st_size > 1000


def test_no_filter_matches_every_row_ranked_by_mean_head_confidence(indexed):
    db, _ = indexed
    r = search(db, limit=5)
    assert r.matched == 120 and len(r.results) == 5
    means = [sum(x[f"{a}_confidence"] for a in ("shape", "colour", "size", "background", "marks")) / 5
             for x in r.results]
    assert means == sorted(means, reverse=True) and r.results[0]["score"] == pytest.approx(means[0], abs=1e-3)

