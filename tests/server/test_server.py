"""The service through FastAPI's TestClient: every endpoint answers what the library answers, and every bad
request gets a 4xx JSON error while the server keeps serving."""

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS
from fastapi.testclient import TestClient
from PIL import Image

from mhtag.index.export import export_index
from mhtag.index.predict import predict
from mhtag.index.search import search
from mhtag.server.app import create_app
from mhtag.server.service import Settings

KEY = "k" * 32
LOCAL = "http://localhost"  # a loopback-bound server answers loopback Host names only


@pytest.fixture
def served(indexed, tmp_path):
    db, _ = indexed
    key = tmp_path / "key"
    key.write_text(KEY)
    client = TestClient(create_app(Settings(db=db, api_key_file=key, max_upload_bytes=200_000)), base_url=LOCAL)
    return client, db


def as_served(result) -> dict:
    """A library search result as the API sends it: paths under the indexed folder."""
    body = json.loads(result.model_dump_json())
    for hit in body["results"]:
        hit["path"] = hit["rel"]
    return body


def _png(img=None) -> bytes:
    buf = io.BytesIO()
    (img or Image.new("RGB", (32, 32), (200, 30, 30))).save(buf, format="PNG")
    return buf.getvalue()


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_health_and_attributes(served):
    client, db = served
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["rows"] == 120 and h["backbone"] == "tiny_cnn" and h["version"] >= 1
    attrs = {a["name"]: a for a in client.get("/api/attributes").json()["attributes"]}
    assert set(attrs) == {"shape", "colour", "size", "background", "marks"} and attrs["marks"]["kind"] == "multi"
    assert sum(v["count"] for v in attrs["colour"]["values"]) == 120  # every row has one colour


def test_search_equals_the_library_and_pages_cover_every_row_once(served):
    client, db = served
    body = {"filters": {"colour": ["red", "blue"]}, "source": "label", "limit": 7}
    first = client.post("/api/search", json=body).json()
    lib = search(db, {"colour": ["red", "blue"]}, source="label", limit=7, facets=True)
    assert first == as_served(lib)
    seen = []
    for offset in range(0, first["matched"] + 7, 7):
        page = client.post("/api/search", json={**body, "offset": offset}).json()
        seen += [r["id"] for r in page["results"]]
    assert len(seen) == len(set(seen)) == first["matched"]
    assert sum(first["facets"]["colour"].values()) == first["matched"]
    assert set(first["facets"]["colour"]) <= {"red", "blue"}


def test_export_downloads_every_matched_row_as_the_library_writes_it(served, tmp_path, monkeypatch):
    client, db = served
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the server writes the file it sends
    body = {"filters": {"colour": ["red"]}, "source": "label", "disputed": False}
    r = client.post("/api/export", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="mhtag-export.csv"' in r.headers["content-disposition"]
    lib = export_index(tmp_path / "lib.csv", db, body["filters"], source="label", relative_paths=True)
    assert r.content == (tmp_path / "lib.csv").read_bytes() and lib.rows == search(db, body["filters"],
                                                                                   source="label").matched
    lines = client.post("/api/export", json={"format": "jsonl"}).text.splitlines()
    assert len(lines) == 120 and json.loads(lines[0])["path"]
    assert "valid values" in _error(client.post("/api/export", json={"filters": {"colour": ["reed"]}}), 400)
    _error(client.post("/api/export", json={"format": "xlsx"}), 422)
    assert not list(scratch.iterdir())  # every export's temporary folder is gone, sent or refused


def test_like_id_and_query_image_rank_by_similarity(served, demo):
    client, db = served
    top = client.post("/api/search", json={"limit": 3}).json()["results"][0]
    near = client.post("/api/search", json={"like_id": top["id"], "limit": 5}).json()
    assert isinstance(top["id"], str) and near["results"][0]["id"] == top["id"]
    assert near["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    own = (demo.parent / "images" / "00007.png").read_bytes()
    query = json.dumps({"filters": {"background": ["dark", "light"]}, "limit": 4})
    r = client.post("/api/search/image", files={"image": ("q.png", own, "image/png")}, data={"query": query})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["path"].endswith("00007.png") and len(r.json()["results"]) == 4


def test_predict_answers_what_the_library_answers(served, demo, tmp_path):
    client, db = served
    img = Image.open(demo.parent / "images" / "00011.png").rotate(90)
    path = tmp_path / "new.png"
    img.save(path)
    r = client.post("/api/predict", files=[("image", ("new.png", path.read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    api = r.json()["predictions"][0]["attributes"]
    lib = predict([path], db).model_dump(mode="json")["predictions"][0]["attributes"]
    for name in lib:
        assert api[name]["fused"]["label"] == lib[name]["fused"]["label"]
        assert [x[0] for x in api[name]["head"]] == [x[0] for x in lib[name]["head"]]
        assert np.allclose([x[1] for x in api[name]["head"]], [x[1] for x in lib[name]["head"]], atol=2e-3)


def test_row_detail_and_images(served, demo):
    client, db = served
    rid = client.post("/api/search", json={"limit": 1}).json()["results"][0]["id"]
    row = client.get(f"/api/rows/{rid}").json()
    answer = {"head", "neighbours", "fused", "agree", "zero_shot"}
    assert row["id"] == rid and set(row["attributes"]["colour"]) == answer
    assert row["labels"]["colour"] in {"red", "green", "blue", "yellow"}
    original = client.get(f"/api/images/{rid}")
    assert row["path"] == row["rel"] == "images/" + Path(row["path"]).name  # no server path in an answer
    assert original.status_code == 200 and original.content == (demo.parent / row["rel"]).read_bytes()
    thumb = client.get(f"/api/images/{rid}/thumb")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_bad_requests_are_4xx_json_and_the_server_keeps_serving(served, tmp_path):
    client, db = served
    up = "/api/predict"
    assert "not an image" in _error(client.post(up, files={"image": ("x.png", b"hello", "image/png")}), 400)
    assert "empty" in _error(client.post(up, files={"image": ("e.png", b"", "image/png")}), 400)
    big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    assert "upload limit" in _error(client.post(up, files={"image": ("b.png", _png(Image.fromarray(big)))}), 413)
    whole = b"x" * (200_000 * 32 + (1 << 20) + 1)  # over the limit on a whole request, declared or streamed
    assert "byte limit" in _error(client.post(up, content=whole, headers={"content-type": "image/png"}), 413)
    streamed = iter([whole[:1 << 20]] * 8)
    assert "byte limit" in _error(client.post("/api/search", content=streamed,
                                              headers={"content-type": "application/json"}), 413)
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    assert "limit" in _error(client.post(up, files={"image": ("bomb.png", bomb.getvalue())}), 413)
    _error(client.post(up, content=b"--xx\r\nnot multipart", headers={"content-type": "multipart/form-data; "
                                                                      "boundary=xx"}), 400)
    _error(client.post(up), 422)  # no image field
    _error(client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert "Did you mean 'colour'" in _error(client.post("/api/search", json={"filters": {"color": ["red"]}}), 400)
    assert "valid values" in _error(client.post("/api/search", json={"filters": {"colour": ["reed"]}}), 400)
    for bad in ({"limit": 0}, {"limit": -1}, {"limit": 10**9}, {"offset": -1}, {"nope": 1}):
        _error(client.post("/api/search", json=bad), 422)
    _error(client.get("/api/rows/12345"), 404)
    _error(client.post("/api/search", json={"like_id": 12345}), 404)
    for path in ("/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/%2Fetc%2Fpasswd/thumb", "/api/images/1e9"):
        r = client.get(path)
        assert 400 <= r.status_code < 500 and b"root:" not in r.content
    assert client.get("/api/health").json()["status"] == "ok"


def test_writes_need_the_key_and_the_same_image_twice_is_one_row(served):
    client, db = served
    files = {"image": ("new.png", _png(), "image/png")}
    _error(client.post("/api/images", files=files), 401)
    _error(client.post("/api/images", files=files, headers={"Authorization": "Bearer wrong"}), 401)
    auth = {"Authorization": f"Bearer {KEY}"}
    labels = json.dumps({"colour": "red", "shape": "square"})
    first = client.post("/api/images", files=files, data={"labels": labels}, headers=auth)
    assert first.status_code == 200, first.text
    rid = first.json()["ids"][0]
    again = client.post("/api/images", files=files, data={"labels": labels}, headers=auth).json()
    assert again["ids"] == [rid] and again["added"] == 0 and again["unchanged"] == 1
    assert client.get("/api/health").json()["rows"] == 121
    assert client.get(f"/api/rows/{rid}").json()["labels"] == {"colour": "red", "shape": "square"}
    hits = client.post("/api/search", json={"filters": {"colour": ["red"]}, "source": "label", "limit": 500})
    assert rid in [r["id"] for r in hits.json()["results"]]  # the next request sees the write
    _error(client.delete(f"/api/images/{rid}"), 401)
    assert client.delete(f"/api/images/{rid}", headers=auth).json() == {"id": rid, "deleted": True}
    assert client.get("/api/health").json()["rows"] == 120
    _error(client.delete(f"/api/images/{rid}", headers=auth), 404)


def test_without_a_key_file_writes_are_refused(indexed):
    db, _ = indexed
    client = TestClient(create_app(Settings(db=db)), base_url=LOCAL)
    assert "disabled" in _error(client.post("/api/images", files={"image": ("a.png", _png())}), 403)


def test_gallery_and_docs_are_served(served):
    client, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.split("<body")[1]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_disputed_labels_are_the_rows_whose_label_and_prediction_differ(served):
    client, db = served
    rows = client.post("/api/search", json={"limit": 500, "facets": False}).json()["results"]
    def differ(r, a):
        label, pred = r[f"{a}_label"], r[f"{a}_pred"]
        return set(label) != set(pred) if isinstance(label, list) else label != pred

    expect = {r["id"] for r in rows if any(differ(r, a) for a in ("shape", "colour", "size", "background", "marks"))}
    got = client.post("/api/search", json={"limit": 500, "disputed": True}).json()
    assert {r["id"] for r in got["results"]} == expect and got["matched"] == len(expect)
    colour = client.post("/api/search", json={"limit": 500, "disputed": True, "filters": {"colour": ["red"]}}).json()
    assert all(r["colour_label"] != r["colour_pred"] for r in colour["results"])


def test_worker_processes_build_the_same_app_from_the_environment(indexed, tmp_path, monkeypatch):
    """`mhtag serve --workers N` hands its settings to uvicorn's workers through the environment."""
    from mhtag.server.app import create_app_from_env

    db, _ = indexed
    key = tmp_path / "key"
    key.write_text(KEY)
    settings = Settings(db=db, api_key_file=key, max_upload_bytes=123_456, threads=1)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings
    client = TestClient(create_app_from_env(), base_url=LOCAL)
    rid = search(db, limit=1).results[0].id
    body = {"filters": {"colour": ["red"]}, "like_id": rid, "limit": 5, "facets": False}
    assert client.post("/api/search", json=body).json() == \
        as_served(search(db, {"colour": ["red"]}, like_id=rid, limit=5))
    assert client.app.state.service.api_key == KEY


@pytest.mark.slow  # two server processes, each loading torch and the index
def test_serve_with_two_workers_answers_like_the_library(indexed):
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    db, _ = indexed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(db).parent / "serve.py"  # registers the tests' tiny backbone, in the workers too (spawned)
    script.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport conftest  # noqa\n"
                      "from mhtag.cli import main\nif __name__ == '__main__':\n    main()\n")
    server = subprocess.Popen([sys.executable, str(script), "-q", "serve", "--db", str(db), "--port", str(port),
                               "--workers", "2"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        rid = search(db, limit=1).results[0].id
        expected = as_served(search(db, {"shape": ["circle"]}, like_id=rid, limit=7))
        for _ in range(20):  # several connections: both workers answer some of them
            got = httpx.post(url + "/api/search", json={"filters": {"shape": ["circle"]}, "like_id": rid,
                                                         "limit": 7, "facets": False}, timeout=30)
            assert got.json() == expected
        assert httpx.post(url + "/api/search", json={"limit": 0}).status_code == 422
    finally:
        server.terminate()
        server.wait(20)


SEARCH_ONLY = """
import sys
from fastapi.testclient import TestClient
from mhtag.server.app import create_app
from mhtag.server.service import Settings
client = TestClient(create_app(Settings(db=sys.argv[1])), base_url="http://localhost")
hit = client.post("/api/search", json={"filters": {"colour": ["red"]}, "facets": True}).json()["results"][0]
assert client.get(f"/api/rows/{hit['id']}").status_code == 200
assert client.post("/api/search", json={"like_id": hit["id"]}).status_code == 200
assert client.get(f"/api/images/{hit['id']}/thumb").status_code == 200
assert client.get("/api/health").status_code == 200 and client.get("/api/attributes").status_code == 200
searched = "torch" in sys.modules
sys.path.insert(0, sys.argv[3])
import conftest  # noqa: E402,F401 - the tests' tiny backbone, which the index's model uses
with open(sys.argv[2], "rb") as fh:
    assert client.post("/api/predict", files={"image": ("x.png", fh.read(), "image/png")}).status_code == 200
print(searched, "torch" in sys.modules)
"""


@pytest.mark.slow
def test_a_server_that_only_searches_never_loads_torch(indexed, demo):
    """Search, facets, similar rows, row details and thumbnails answer without the model; the first prediction
    loads it."""
    import subprocess
    import sys

    image = demo.parent / "images" / "00001.png"
    out = subprocess.run([sys.executable, "-c", SEARCH_ONLY, str(indexed[0]), str(image), str(TESTS)],
                         capture_output=True, text=True, cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
