"""An index on object storage (`s3://` + storage options) runs the same code as a local one: indexed, re-run,
searched, predicted from, exported and written to against a real S3 API (moto's server on a free localhost port), and it
gives what the same work on a local folder gives."""

import json
from pathlib import Path

import pytest

from mhtag.core.errors import MhtagError
from mhtag.core.storage import STORAGE_OPTIONS_ENV, storage_options
from mhtag.index.build import IndexOptions, index_images
from mhtag.index.export import export_index
from mhtag.index.predict import predict
from mhtag.index.search import search
from mhtag.index.store import open_table
from mhtag.index.uploads import add_images, delete_row

pytestmark = pytest.mark.slow  # a local S3 server; the suite below runs the same code on local folders
BUCKET = "mhtag-test"  # the bucket conftest's s3_options makes


@pytest.fixture
def remote(s3_options, monkeypatch, tmp_path, request):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(s3_options))
    monkeypatch.chdir(tmp_path)  # a URI mistaken for a folder would appear here as `s3:/...`
    yield f"s3://{BUCKET}/{request.node.name}"
    assert not Path("s3:").exists(), "an s3:// URI was written to as a local folder"


def _table(db) -> dict:
    rows = open_table(db).to_arrow().drop_columns(["mtime_ns"]).to_pylist()
    return {r["rid"]: r for r in rows}


def test_an_index_on_object_storage_holds_what_a_local_one_holds(demo, tiny_run, indexed, remote, s3_options):
    import boto3

    local, _ = indexed
    report = index_images(demo.parent, remote, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    assert report.added == 120 and not report.failed
    s3 = boto3.client("s3", endpoint_url=s3_options["aws_endpoint"], aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    prefix = remote.removeprefix(f"s3://{BUCKET}/")
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert f"{prefix}/meta.json" in stored and any(k.startswith(f"{prefix}/images.lance/_versions/") for k in stored)
    got, want = _table(remote), _table(local)
    assert got.keys() == want.keys()
    for rid, row in want.items():
        assert got[rid]["path"] == row["path"] and got[rid]["label_shape"] == row["label_shape"]
        assert got[rid]["vector"] == pytest.approx(row["vector"], abs=1e-5)
    again = index_images(demo.parent, remote)  # re-run: the plan reads the remote table, nothing to do
    assert again.added == 0 and again.unchanged == 120


def test_search_and_predict_on_object_storage_answer_like_local(demo, tiny_run, indexed, remote):
    local, _ = indexed
    index_images(demo.parent, remote, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    for question in ({"filters": {"shape": ["circle"]}, "facets": True},
                     {"filters": {"colour": ["red", "blue"]}, "like_id": next(iter(_table(local)))}):
        assert search(remote, **question) == search(local, **question)
    images = sorted(demo.parent.rglob("*.png"))[:4]
    assert predict(images, remote).model_dump() == predict(images, local).model_dump()
    for db, name in ((remote, "remote.csv"), (local, "local.csv")):
        export_index(name, db, {"colour": ["red"]})
    assert sorted(Path("remote.csv").read_text().splitlines()) == sorted(Path("local.csv").read_text().splitlines())


def test_a_write_to_the_remote_table_is_seen_by_the_next_search(demo, tiny_run, remote):
    index_images(demo.parent, remote, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    before = search(remote, limit=1)
    delete_row(remote, before.results[0].id)
    after = search(remote, limit=200)
    assert after.matched == before.matched - 1 and before.results[0].id not in {h.id for h in after.results}


def test_uploads_to_a_remote_index_are_refused_with_a_clear_error(demo, tiny_run, remote):
    index_images(demo.parent, remote, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    with pytest.raises(MhtagError, match="object storage"):
        add_images(remote, [next(demo.parent.rglob("*.png")).read_bytes()], enc=None)


def test_bad_storage_options_are_one_clear_error(monkeypatch):
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "{not json")
    with pytest.raises(MhtagError, match=STORAGE_OPTIONS_ENV):
        storage_options()
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, '["a list"]')
    with pytest.raises(MhtagError, match="JSON object"):
        storage_options()


def test_the_cli_takes_an_object_store_uri_and_both_engines_answer_like_local(demo, tiny_run, indexed, remote):
    from typer.testing import CliRunner

    from mhtag.cli.app import app

    local, _ = indexed
    out = CliRunner().invoke(app, ["index", str(demo.parent), "--db", remote, "--model", str(tiny_run), "--labels",
                                   str(demo), "--workers", "0", "--build-ann"])
    assert out.exit_code == 0, out.output
    question = ["search", "--colour", "red", "--size", "large", "--json"]
    answers = [CliRunner().invoke(app, [*question, "--db", db, "--engine", engine])
               for db, engine in ((remote, "memory"), (remote, "lance"), (str(local), "memory"))]
    assert all(a.exit_code == 0 for a in answers) and '"matched"' in answers[0].output
    assert answers[0].output == answers[1].output == answers[2].output


def test_the_service_serves_an_index_on_object_storage(demo, tiny_run, indexed, remote):
    from fastapi.testclient import TestClient

    from mhtag.server.app import create_app
    from mhtag.server.service import Settings

    local, _ = indexed
    index_images(demo.parent, remote, model=tiny_run, labels=demo, options=IndexOptions(workers=0))
    client = TestClient(create_app(Settings(db=remote)), base_url="http://localhost")
    assert client.get("/api/health").json()["rows"] == 120
    got = client.post("/api/search", json={"filters": {"colour": ["red"]}, "limit": 5})
    expected = search(local, {"colour": ["red"]}, limit=5, facets=True).model_dump(mode="json")
    for hit in expected["results"]:
        hit["path"] = hit["rel"]  # the API answers with paths under the indexed folder
    assert got.json() == expected
