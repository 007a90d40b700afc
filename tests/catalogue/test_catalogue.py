"""The catalogue loop: labels corrected where people see them (library and API), with history and undo, kept
across later index runs and restarts; corrections in and out as CSV; the review queue; retraining from the index."""

import json
import threading

import pytest
from conftest import run_main
from fastapi.testclient import TestClient

from mhtag.catalogue import edits
from mhtag.catalogue.edits import label_history, set_labels, undo
from mhtag.catalogue.retrain import catalogue_table, retrain
from mhtag.catalogue.review import answer, review_queue
from mhtag.core.errors import MhtagError
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.info import index_health
from mhtag.index.labels import InvalidLabel
from mhtag.index.meta import read_meta
from mhtag.index.search import search
from mhtag.index.store import open_table, read_columns
from mhtag.server.app import create_app
from mhtag.server.service import Settings

KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {KEY}"}


def _label(db, rid, attribute="colour"):
    return read_columns(open_table(db), ["rid", f"label_{attribute}"], where=f"rid = {rid}").to_pylist()[0][
        f"label_{attribute}"]


def _other(value, values=("red", "green", "blue", "yellow")):
    return next(v for v in values if v != value)


@pytest.fixture
def catalogue(demo_copy, tiny_run, tmp_path):
    """A private index of a private copy of the demo, with its known labels."""
    db = tmp_path / "db"
    index_images(demo_copy.parent, db, model=tiny_run, labels=demo_copy, options=IndexOptions(workers=0))
    return db, demo_copy


def test_a_correction_is_recorded_can_be_undone_and_outlives_index_runs_and_restarts(catalogue):
    db, csv = catalogue
    hit = search(db, limit=1, source="label").results[0]
    new = _other(hit.colour_label)
    (change,) = set_labels(db, hit.id, {"colour": new}, source="gallery")
    assert (change.old, change.new, change.source) == (hit.colour_label, new, "gallery") and _label(db, hit.id) == new
    assert set_labels(db, hit.id, {"colour": new}) == []  # already that value: no change
    index_images(csv.parent, db, labels=csv, options=IndexOptions(workers=0))  # the CSV still says the old one
    assert _label(db, hit.id) == new
    image = csv.parent / hit.rel
    image.write_bytes(image.read_bytes() + b"\0")  # the image changes: its row is embedded again
    report = index_images(csv.parent, db, labels=csv, options=IndexOptions(workers=0))
    assert report.updated == 1 and _label(db, hit.id) == new
    assert [c.id for c in label_history(db, hit.id)] == [1]  # a restart reads it all back from disk
    back = undo(db, change.id)
    assert (back.new, back.source, back.note) == (hit.colour_label, "undo", "undo of change 1")
    assert _label(db, hit.id) == hit.colour_label
    with pytest.raises(MhtagError, match=r"changed again after change 1 \(change 2\); undo that one first"):
        undo(db, change.id)


def test_values_are_checked_and_new_ones_or_new_attributes_only_on_purpose(catalogue):
    db, _ = catalogue
    rid = search(db, limit=1).results[0].id
    with pytest.raises(InvalidLabel, match="not one of its values.*add_values"):
        set_labels(db, rid, {"colour": "mauve"})
    with pytest.raises(InvalidLabel, match="unknown attribute 'pattern'"):
        set_labels(db, rid, {"pattern": "striped"})
    set_labels(db, rid, {"colour": "mauve", "pattern": "striped", "marks": ["dot", "star"]}, add_values=True)
    meta = read_meta(db)
    assert "mauve" in meta.attribute("colour").label_values and meta.attribute("pattern").has_labels
    assert _label(db, rid, "pattern") == "striped" and _label(db, rid, "marks") == "|dot|star|"
    set_labels(db, rid, {"colour": None})
    assert _label(db, rid) == ""


def test_two_concurrent_edits_of_one_row_are_both_recorded_and_the_later_wins(catalogue):
    db, _ = catalogue
    rid = search(db, limit=1).results[0].id
    barrier = threading.Barrier(2)

    def edit(value):
        barrier.wait()
        set_labels(db, rid, {"colour": value})

    threads = [threading.Thread(target=edit, args=(v,)) for v in ("green", "yellow")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    changes = label_history(db, rid)
    assert len(changes) == 2 and _label(db, rid) == changes[-1].new and changes[-1].old == changes[0].new


def test_a_cut_write_is_replayed_and_a_lost_history_is_reported(catalogue, monkeypatch):
    db, _ = catalogue
    rid = search(db, limit=1).results[0].id
    real = edits._apply
    monkeypatch.setattr(edits, "_apply", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed after the change was recorded, before the table was written
        set_labels(db, rid, {"colour": "green" if _label(db, rid) != "green" else "red"})
    monkeypatch.setattr(edits, "_apply", real)
    wanted = label_history(db)[-1].new
    set_labels(db, rid, {"size": _other(_label(db, rid, "size"), ("small", "large"))})  # applies the cut one first
    assert _label(db, rid) == wanted and read_meta(db).labels_applied == 2
    for f in (db / "label_history.lance").rglob("*"):
        if f.is_file():
            f.unlink()
    (db / "label_history.lance").rename(db / "gone")
    with pytest.raises(MhtagError, match="label history of index .* is missing .*2 change"):
        label_history(db)
    with pytest.raises(MhtagError, match="missing"):
        set_labels(db, rid, {"size": "small"})  # never silently started anew


def test_labels_export_and_import_through_the_cli(catalogue, tmp_path, monkeypatch, capsys):
    db, csv = catalogue
    code, out = run_main(monkeypatch, capsys, "labels", "export", tmp_path / "out.csv", "--db", db)
    assert code == 0 and "wrote the labels of 120 rows" in out.out
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "path,split,shape,colour,size,background,marks" and len(lines) == 121
    first = lines[1].split(",")
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"path,colour,marks\n{first[0]},{_other(first[3])},dot|bar\nimages/nosuch.png,red,\n"
                     f"{lines[2].split(',')[0]},mauve,\n")
    code, out = run_main(monkeypatch, capsys, "labels", "import", fixes, "--db", db)
    assert code == 0 and "label(s) changed on 1 of 3 row(s)" in out.out
    assert "row 3 (images/nosuch.png): no indexed image" in out.err and "row 4" in out.err and "mauve" in out.err
    code, out = run_main(monkeypatch, capsys, "labels", "history", "--db", db, "--json")
    history = json.loads(out.out)
    assert {c["source"] for c in history} == {"csv"} and history[0]["rel"] == first[0]
    code, out = run_main(monkeypatch, capsys, "labels", "undo", str(history[0]["id"]), "--db", db)
    assert code == 0 and "undo of change" in out.out


def test_retraining_from_the_catalogue_decodes_no_image_and_refreshes_every_row(catalogue, monkeypatch):
    from mhtag.data import datasets, images

    db, _ = catalogue
    for hit in search(db, limit=10, source="label").results:  # teach it something: 10 rows say blue
        set_labels(db, hit.id, {"colour": "blue"})
    assert index_health(db).changes_since_model > 0
    decoded = []
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: decoded.append(a) or None)
    monkeypatch.setattr(datasets, "decode_image", images.decode_image)
    before = {r["rid"]: r["probs_colour"] for r in read_columns(open_table(db), ["rid", "probs_colour"]).to_pylist()}
    report = retrain(db)
    assert decoded == [] and report.rows_refreshed == 120 and report.labelled_rows == len(catalogue_table(db).frame)
    after = {r["rid"]: r["probs_colour"] for r in read_columns(open_table(db), ["rid", "probs_colour"]).to_pylist()}
    assert all(after[k] != before[k] for k in before)
    meta = read_meta(db)
    assert meta.model_path.startswith(str(db / "models")) and index_health(db).changes_since_model == 0


def test_the_review_queue_ranks_doubted_labels_and_takes_answers(catalogue):
    db, _ = catalogue
    queue = review_queue(db, limit=500)
    assert queue.total == len(queue.items) > 0
    assert [i.score for i in queue.items] == sorted((i.score for i in queue.items), reverse=True)
    first, second = queue.items[0], queue.items[1]
    assert first.given != first.suggested and first.neighbour_ids and first.head
    answer(db, first.id, first.attribute, accept=True)
    assert _label(db, first.id, first.attribute) == first.suggested
    answer(db, second.id, second.attribute, accept=False)
    assert _label(db, second.id, second.attribute) == second.given  # kept, and recorded
    left = {(i.id, i.attribute) for i in review_queue(db, limit=500).items}
    assert (first.id, first.attribute) not in left and (second.id, second.attribute) not in left
    assert [c.note for c in label_history(db, second.id)] == ["kept"]


def test_the_service_edits_undoes_reviews_and_retrains(catalogue, tmp_path):
    db, _ = catalogue
    key = tmp_path / "key"
    key.write_text(KEY)
    client = TestClient(create_app(Settings(db=db, api_key_file=key)), base_url="http://localhost")
    rid = client.post("/api/search", json={"limit": 1, "source": "label"}).json()["results"][0]["id"]
    old = client.get(f"/api/rows/{rid}").json()["labels"]["colour"]
    body = {"labels": {"colour": _other(old)}, "source": "gallery"}
    assert client.patch(f"/api/rows/{rid}", json=body).status_code == 401
    edited = client.patch(f"/api/rows/{rid}", json=body, headers=AUTH)
    assert edited.status_code == 200 and edited.json()["labels"]["colour"] == _other(old)
    assert [(c["old"], c["new"], c["source"]) for c in edited.json()["history"]] == [(old, _other(old), "gallery")]
    bad = client.patch(f"/api/rows/{rid}", json={"labels": {"colour": "mauve"}}, headers=AUTH)
    assert bad.status_code == 422 and "add_values" in bad.json()["error"]
    assert client.patch("/api/rows/99999999999999999999", json=body, headers=AUTH).status_code == 404
    change = edited.json()["history"][0]["id"]
    assert client.post(f"/api/changes/{change}/undo", headers=AUTH).json()["new"] == old
    queue = client.get("/api/review?limit=3").json()
    item = queue["items"][0]
    done = client.post("/api/review", json={"row": item["id"], "attribute": item["attribute"], "accept": True},
                       headers=AUTH)
    assert done.status_code == 200 and done.json()["labels"][item["attribute"]] == item["suggested"]
    assert client.get("/api/health").json()["changes_since_model"] == 3
    started = client.post("/api/retrain", headers=AUTH).json()
    assert started["state"] == "running"
    for _ in range(600):
        status = client.get("/api/retrain").json()
        if status["state"] != "running":
            break
        threading.Event().wait(0.05)
    assert status["state"] == "done", status
    assert client.get("/api/health").json()["changes_since_model"] == 0


@pytest.mark.slow
def test_a_folder_with_nothing_else_says_what_to_do_and_grows_into_a_tagged_catalogue(demo_copy, tmp_path,
                                                                                       monkeypatch, capsys):
    """Index a bare folder (no model, no labels), get told the next steps, import labels, train on the index,
    index with the run: the attributes are searchable."""
    import mhtag.models.backbones as backbones

    monkeypatch.setattr(backbones, "create_backbone", _tiny(backbones.create_backbone))  # the default is Lite0
    db, folder = tmp_path / "db", demo_copy.parent
    code, out = run_main(monkeypatch, capsys, "index", folder, "--db", db)
    assert code == 0 and "find similar images" in out.out and "mhtag labels import" in out.out
    code, out = run_main(monkeypatch, capsys, "search", "--db", db, "--colour", "red")
    assert code == 1 and "no attributes yet" in out.err and "mhtag train --db" in out.err
    code, out = run_main(monkeypatch, capsys, "predict", folder / "images" / "00001.png", "--db", db)
    assert "no attributes yet" in out.out
    code, out = run_main(monkeypatch, capsys, "labels", "import", demo_copy, "--db", db)
    assert code == 0 and "row(s)" in out.out and "add_values" in out.err  # every value is new: refused row by row
    code, out = run_main(monkeypatch, capsys, "labels", "import", demo_copy, "--db", db, "--add-values",
                         "--multilabel", "marks")
    assert code == 0 and "on 120 of 120 row(s)" in out.out
    code, out = run_main(monkeypatch, capsys, "train", "--db", db, "--out", tmp_path / "run", "--set",
                         "probe_epochs=3", "--set", "num_workers=0", "--set", "report=false")
    assert code == 0, out.err
    code, out = run_main(monkeypatch, capsys, "index", folder, "--db", db, "--model", tmp_path / "run")
    assert code == 0, out.err  # the same backbone: no --rebuild, every row's answers refreshed
    assert search(db, {"colour": ["red"]}, source="pred", limit=1).matched > 0


def _tiny(create):
    def create_tiny(name, *args, **kwargs):
        return create("tiny_cnn" if name == "efficientnet_lite0" else name, *args, **kwargs)
    return create_tiny


def test_retraining_a_large_catalogue_keeps_to_a_step_budget():
    """A probe converges in optimizer steps: a small catalogue keeps its epochs, a large one trains fewer."""
    from types import SimpleNamespace

    import pandas as pd

    from mhtag.catalogue.retrain import RETRAIN_MAX_STEPS, epochs_within_budget
    from mhtag.training.batches import PROBE_BATCH

    def table(train_rows: int):  # the one thing the budget reads of a LabelTable
        return SimpleNamespace(frame=pd.DataFrame({"split": ["train"] * train_rows + ["val"] * 100}))

    assert epochs_within_budget(40, table(10_221)) == 40
    large = epochs_within_budget(40, table(80_000))
    assert large * -(-80_000 // PROBE_BATCH) <= RETRAIN_MAX_STEPS < (large + 1) * -(-80_000 // PROBE_BATCH)
    assert epochs_within_budget(40, table(10_000_000)) == 1


def test_the_review_queue_is_scored_once_between_answers_and_sees_labels_an_index_run_changed(catalogue,
                                                                                              monkeypatch):
    import pandas as pd

    from mhtag.catalogue import review

    db, csv = catalogue
    scorings = []
    real = review._score_all
    monkeypatch.setattr(review, "_score_all", lambda *a: scorings.append(1) or real(*a))
    first = review_queue(db, limit=5).items
    answer(db, first[0].id, first[0].attribute, accept=False)
    after = review_queue(db, limit=5).items
    assert len(scorings) == 1 and first[0].id not in {i.id for i in after if i.attribute == first[0].attribute}
    top = after[0]  # a labels CSV run now gives it the suggested value: it must leave the queue
    frame = pd.read_csv(csv, keep_default_na=False)
    frame.loc[frame["path"] == top.rel, top.attribute] = top.suggested
    frame.to_csv(csv, index=False)
    index_images(csv.parent, db, labels=csv, options=IndexOptions(workers=0))
    assert (top.id, top.attribute) not in {(i.id, i.attribute) for i in review_queue(db, limit=500).items}
    assert len(scorings) == 2
