"""`mhtag export`: the index's rows as CSV, Parquet or JSON Lines, selected by the search filters."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mhtag import cli
from mhtag.core.errors import MhtagError
from mhtag.index.export import export_index
from mhtag.index.search import search
from mhtag.index.store import open_table, read_columns, vectors_of


def _stored(db):
    return {r["path"]: r for r in read_columns(open_table(db), ["path", "label_colour", "pred_colour", "conf_colour",
                                                                "label_marks", "pred_marks"]).to_pylist()}


def test_csv_holds_the_rows_search_matches_with_answer_label_prediction_and_confidence(indexed, tmp_path):
    db, report = indexed
    out = tmp_path / "red.csv"
    result = export_index(out, db, [("colour", "red")])
    expected = search(db, [("colour", "red")], limit=1000)
    got = pd.read_csv(out, keep_default_na=False)
    assert result.rows == len(got) == expected.matched > 0
    assert set(got["path"]) == {h.path for h in expected.results}
    assert list(got.columns) == result.columns
    stored = _stored(db)
    for row in got.itertuples():
        s = stored[row.path]
        assert (row.colour_label, row.colour_pred) == (s["label_colour"], s["pred_colour"])
        assert row.colour == (s["label_colour"] or s["pred_colour"]) == "red"
        assert row.colour_confidence == pytest.approx(s["conf_colour"], abs=1e-4)
        assert row.marks_label == s["label_marks"].strip("|")  # tags joined by |, as in a labels CSV


def test_parquet_and_jsonl_carry_tag_lists_vectors_and_text_ids(indexed, tmp_path):
    db, _ = indexed
    everything = export_index(tmp_path / "all.parquet", db, vectors=True)
    table = pq.read_table(tmp_path / "all.parquet")
    stored = read_columns(open_table(db), ["rid", "label_marks", "vector"])
    assert everything.rows == table.num_rows == stored.num_rows
    by_rid = dict(zip(stored.column("rid").to_pylist(), range(stored.num_rows), strict=True))
    order = [by_rid[r] for r in table.column("id").to_pylist()]
    dim = stored.column("vector").type.list_size
    assert np.allclose(np.array(table.column("vector").to_pylist()), vectors_of(stored, dim)[order])
    labels = stored.column("label_marks").to_pylist()
    assert table.column("marks_label").to_pylist() == [[t for t in labels[i].split("|") if t] for i in order]

    export_index(tmp_path / "dots.jsonl", db, {"marks": ["dot"]}, source="label")
    rows = [json.loads(line) for line in (tmp_path / "dots.jsonl").read_text().splitlines()]
    assert rows and all("dot" in r["marks_label"] and isinstance(r["id"], str) for r in rows)
    assert {int(r["id"]) for r in rows} <= set(by_rid)


def test_where_disputed_and_no_match(indexed, tmp_path):
    db, _ = indexed
    test_rows = export_index(tmp_path / "test.csv", db, where="split = 'test'")
    assert set(pd.read_csv(tmp_path / "test.csv")["split"]) == {"test"} and test_rows.rows > 0
    disputed = export_index(tmp_path / "d.csv", db, disputed=True)
    assert disputed.rows == search(db, disputed=True, limit=1).matched
    none = export_index(tmp_path / "none.csv", db, where="width < 0")
    assert none.rows == 0 and (tmp_path / "none.csv").read_text().startswith('"id","path"')  # the header only


def test_refusals_leave_files_alone(indexed, tmp_path):
    db, _ = indexed
    kept = tmp_path / "labels.csv"
    kept.write_text("precious\n")
    with pytest.raises(MhtagError, match="exists"):
        export_index(kept, db)
    assert kept.read_text() == "precious\n"
    with pytest.raises(MhtagError, match="not in CSV"):
        export_index(tmp_path / "v.csv", db, vectors=True)
    with pytest.raises(MhtagError, match="'txt' is not one"):
        export_index(tmp_path / "t.txt", db)
    with pytest.raises(MhtagError, match="unknown value 'reed'"):
        export_index(tmp_path / "r.csv", db, [("colour", "reed")])
    with pytest.raises(MhtagError, match="'no_such_column = 1' could not be evaluated"):
        export_index(tmp_path / "w.csv", db, where="no_such_column = 1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["labels.csv"]
    assert export_index(kept, db, overwrite=True).rows > 0


def test_cli_filters_json_report_and_usage_errors(indexed, tmp_path):
    db, _ = indexed
    runner = CliRunner()
    out = tmp_path / "blue.csv"
    r = runner.invoke(cli.app, ["export", str(out), "--db", str(db), "--colour", "blue", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["rows"] == len(pd.read_csv(out)) == search(db, [("colour", "blue")], limit=1).matched
    again = runner.invoke(cli.app, ["export", str(out), "--db", str(db)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(cli.app, ["export", str(tmp_path / "v.csv"), "--db", str(db), "--vectors"]).exit_code == 2
    assert runner.invoke(cli.app, ["export", str(tmp_path / "x.txt"), "--db", str(db)]).exit_code == 2


def test_an_export_stopped_midway_leaves_the_old_file_and_no_partial_one(indexed, tmp_path, monkeypatch):
    import mhtag.index.export as export

    db, _ = indexed
    out = tmp_path / "rows.csv"
    out.write_text("the previous export\n")
    monkeypatch.setattr(export, "BATCH_ROWS", 16)  # 120 rows: eight batches
    real, seen = export._converter, []

    def converter(*args, **kwargs):
        convert = real(*args, **kwargs)

        def stop_at_third(batch):
            seen.append(batch.num_rows)
            if len(seen) == 3:
                raise KeyboardInterrupt
            return convert(batch)
        return stop_at_third

    monkeypatch.setattr(export, "_converter", converter)
    with pytest.raises(KeyboardInterrupt):
        export_index(out, db, overwrite=True)
    assert seen == [16, 16, 16] and out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "rows.csv"]  # no temporary file left behind


def test_free_text_columns_are_kept_shown_in_hits_and_exported(demo_copy, tiny_run, tmp_path):
    """A product title beside the labels is no head: it is stored per row, named by `index_attributes`, carried by
    every hit and exported."""
    from mhtag.index.build import IndexOptions, index_images
    from mhtag.index.info import index_attributes

    frame = pd.read_csv(demo_copy, keep_default_na=False)
    frame["title"] = [f"Product number {i} in {c}" for i, c in enumerate(frame["colour"])]
    frame.to_csv(demo_copy, index=False)
    db = tmp_path / "db"
    index_images(demo_copy.parent, db, model=tiny_run, labels=demo_copy, options=IndexOptions(workers=0))
    attributes = index_attributes(db)
    assert attributes.texts == ["title"] and "title" not in [a.name for a in attributes.attributes]
    hit = search(db, [("colour", "red")], limit=1, source="label").results[0]
    assert hit.title.startswith("Product number ") and hit.title.endswith(" in red")
    export_index(tmp_path / "out.csv", db)
    exported = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).set_index("path")
    assert exported.loc[hit.path, "title"] == hit.title


def test_the_fused_answer_of_every_row_is_the_one_the_row_detail_gives(indexed, tmp_path):
    """`--fused`: per attribute the head mixed with the vote of the row's nearest labelled rows (itself excluded),
    exactly what `predict` and the gallery's detail show for that row."""
    from mhtag.index.predict import Predictor

    db, _ = indexed
    report = export_index(tmp_path / "fused.jsonl", db, fused=True)
    rows = [json.loads(line) for line in (tmp_path / "fused.jsonl").read_text().splitlines()]
    assert report.rows == len(rows) == 120 and "colour_fused" in report.columns and "marks_fused" in report.columns
    predictor = Predictor(db)
    for row in rows[::17]:
        detail = predictor.row(int(row["id"]))
        for name in ("colour", "shape", "marks"):
            label = detail.attributes[name].fused.label
            assert row[f"{name}_fused"] == (sorted(label) if name == "marks" else label), (name, row["path"])
            assert row[f"{name}_fused_confidence"] == pytest.approx(detail.attributes[name].fused.confidence, abs=2e-4)
    csv = pd.read_csv(export_index(tmp_path / "fused.csv", db, fused=True).path, keep_default_na=False)
    assert set(csv["marks_fused"]) <= {"", "bar", "cross", "dot", "bar|cross", "bar|dot", "cross|dot", "bar|cross|dot"}
