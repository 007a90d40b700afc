"""The second adversarial pass (issue 39): each input that once took the machine down, corrupted the vocabulary or
ended in a traceback, at the level a user meets it. Inputs that could exhaust memory run in a subprocess under
`resource.setrlimit`, never against the whole machine."""

import io
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MHTAG, run_main
from fastapi.testclient import TestClient
from PIL import Image

from mhtag.index.build import IndexOptions, index_images
from mhtag.index.store import open_table
from mhtag.server.app import create_app
from mhtag.server.service import Settings

KEY = "k" * 32
LOCAL = "http://localhost"


def _bounded(memory_gb: float):
    def limit() -> None:
        size = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    return limit


def _png(size=(32, 32), colour=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def served(indexed, tmp_path):
    db, _ = indexed
    key = tmp_path / "key"
    key.write_text(KEY)
    return TestClient(create_app(Settings(db=db, api_key_file=key)), base_url=LOCAL), db


AUTH = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------- 1. unbounded memory from one input


def test_a_device_or_a_fifo_is_refused_before_it_is_read(tmp_path):
    """Reading /dev/zero whole would fill memory, a FIFO would hang: both are refused by what they are, in a
    subprocess capped at 1 GB and 60 s so that a regression cannot take the machine down."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = ("from mhtag.data.images import load_image\nfrom mhtag.core.errors import ImageError\n"
            f"for p in ('/dev/zero', {str(fifo)!r}):\n"
            "    try:\n        load_image(p)\n    except ImageError as e:\n        print(e.reason)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       preexec_fn=_bounded(1))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["not a regular file (a device, FIFO or socket)"] * 2


def test_an_over_large_file_is_refused_by_its_size(tmp_path):
    from mhtag.core.errors import ImageError
    from mhtag.data.images import read_image_bytes

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageError, match="over the 1,024 byte limit"):
        read_image_bytes(big, max_bytes=1024)


def test_predict_on_dev_zero_and_a_fifo_through_the_cli(indexed, tmp_path, monkeypatch, capsys):
    db, _ = indexed
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, out = run_main(monkeypatch, capsys, "predict", "/dev/zero", fifo, "--db", db)
    assert code == 1 and "Traceback" not in out.err
    assert out.out.count("not a regular file") == 2 and "none of the 2 input(s) could be read" in out.err


def test_sizes_in_a_config_are_bounded_before_anything_is_written(demo, tmp_path):
    """The bounds are config checks (nothing trains when one fails); the user's path is the entry point in a
    subprocess capped at 6 GB, so that a lost bound would hit the cap there instead of taking the machine down."""
    from mhtag.core.config import load_config
    from mhtag.core.errors import MhtagError

    for values, words in (({"image_size": [100000, 100000]}, "each side 8 to 2048"),
                          ({"batch_size": 100000}, "batch_size"),
                          ({"image_size": [2048, 2048]}, "pixels a batch")):
        with pytest.raises(MhtagError, match=words):
            load_config(overrides=values)
    r = subprocess.run([MHTAG, "train", "--labels", str(demo), "--set", "image_size=[100000,100000]", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120, preexec_fn=_bounded(6))
    assert r.returncode == 1 and "each side 8 to 2048" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(served):
    client, _ = served
    bomb = _png((8000, 8000), mode="1")  # 64 Mpx: one is within the limit, eight are over any request's budget
    files = [("image", (f"b{i}.png", bomb, "image/png")) for i in range(8)]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 413 and "pixels" in r.json()["error"]
    assert client.get("/api/health").json()["status"] == "ok"


# ---------------------------------------------------------------- 2. the write API and the vocabulary


@pytest.mark.parametrize("labels, words", [
    ({"marks": [1, 2]}, "expected a list of tags"), ({"shape": 5}, "expected a string"),
    ({"shape": True}, "expected a string"), ({"shape": {"a": 1}}, "expected a string"),
    ({"shape": "hexagon<script>"}, "not one of its values"), ({"shape": "circle|square"}, "separates tags"),
    ({"marks": "dot"}, "a list of tags"), ({"nosuch": "x"}, "unknown attribute"), ({"shape": ""}, "empty"),
])
def test_upload_labels_are_typed_and_checked_against_the_vocabulary(served, labels, words):
    client, _ = served
    before = client.get("/api/attributes").json()
    r = client.post("/api/images", files={"image": ("a.png", _png(), "image/png")},
                    data={"labels": json.dumps(labels)}, headers=AUTH)
    assert r.status_code == 422 and words in r.json()["error"], r.text
    assert client.get("/api/attributes").json() == before and client.get("/api/health").json()["rows"] == 120


def test_a_new_value_only_when_asked_for_and_case_follows_the_vocabulary(served):
    client, _ = served
    error = client.post("/api/images", files={"image": ("a.png", _png(), "image/png")},
                        data={"labels": json.dumps({"shape": "hexagon"})}, headers=AUTH).json()["error"]
    assert "circle" in error and "add_values" in error  # the valid values, and how to add one on purpose
    r = client.post("/api/images", files={"image": ("a.png", _png(), "image/png")}, headers=AUTH,
                    data={"labels": json.dumps({"shape": "hexagon", "colour": "RED", "marks": ["Dot", "bar"]}),
                          "add_values": "true"})
    assert r.status_code == 200, r.text
    row = client.get(f"/api/rows/{r.json()['ids'][0]}").json()
    assert row["labels"] == {"shape": "hexagon", "colour": "red", "marks": ["bar", "dot"]}
    values = {a["name"]: [v["value"] for v in a["values"]] for a in client.get("/api/attributes").json()["attributes"]}
    assert "hexagon" in values["shape"] and "RED" not in values["colour"]


# ---------------------------------------------------------------- 3. service 500s


def test_malformed_query_parts_ids_and_missing_files_are_4xx(served, demo_copy, tiny_run, tmp_path):
    client, db = served
    image = {"image": ("q.png", _png(), "image/png")}
    for query in ('{"limit": -1}', '{"zzz": 1}', "[1]"):
        r = client.post("/api/search/image", files=image, data={"query": query})
        assert r.status_code == 422 and "query" in r.json()["error"], r.text
    for rid in ("99999999999999999999999", "-99999999999999999999999"):
        assert client.delete(f"/api/images/{rid}", headers=AUTH).status_code == 404
        assert client.get(f"/api/rows/{rid}").status_code == 404
        assert client.get(f"/api/images/{rid}/thumb").status_code == 404
    assert client.get("/api/health").json()["status"] == "ok"


def test_a_file_deleted_or_replaced_since_indexing_is_never_served(demo_copy, tiny_run, tmp_path):
    root, db = demo_copy.parent, tmp_path / "db"
    inside = root / "images" / "inside.png"
    Image.new("RGB", (32, 32), "red").save(inside)
    index_images(root, db, model=tiny_run, options=IndexOptions(workers=0))
    client = TestClient(create_app(Settings(db=db)), base_url=LOCAL)
    hits = {h["rel"]: h["id"] for h in client.post("/api/search", json={"limit": 500}).json()["results"]}
    gone, linked, edited = (root / "images" / f"0000{i}.png" for i in range(3))
    gone.unlink()
    linked.unlink()
    linked.symlink_to("/etc/passwd")
    Image.open(edited).rotate(90).save(edited)
    outside = tmp_path / "outside.png"
    shutil.copy(inside, outside)
    inside.unlink()
    inside.symlink_to(outside)  # the same bytes, but no longer inside the indexed folder
    for path in (gone, linked, edited, inside):
        for suffix in ("", "/thumb"):
            r = client.get(f"/api/images/{hits[path.relative_to(root).as_posix()]}{suffix}")
            assert r.status_code == 404 and b"root:" not in r.content, r.text
    assert client.get(f"/api/images/{hits['images/00003.png']}").status_code == 200


# ---------------------------------------------------------------- 5. tracebacks in ordinary operations


def _damage(db: Path, how: str) -> None:
    data = sorted((db / "images.lance" / "data").glob("*.lance"))
    if how == "truncated":
        os.truncate(data[0], 100)
    elif how == "deleted":
        for f in data:
            f.unlink()
    else:
        for manifest in (db / "images.lance" / "_versions").glob("*.manifest"):
            manifest.write_bytes(b"garbage\n")


@pytest.mark.parametrize("how", ["truncated", "deleted", "manifest"])
def test_a_damaged_table_is_one_line_naming_the_index(indexed, tmp_path, monkeypatch, capsys, demo, how):
    from mhtag.core.errors import MhtagError
    from mhtag.index import store

    db, _ = indexed
    running = TestClient(create_app(Settings(db=db)), base_url=LOCAL)
    _damage(db, how)
    store._snapshot.cache_clear()  # as a new process finds it: nothing of the table in memory
    for args in (("search", "--db", db), ("export", tmp_path / "x.csv", "--db", db),
                 ("index", demo.parent, "--db", db)):
        code, out = run_main(monkeypatch, capsys, *args)
        assert code == 1 and "Traceback" not in out.err and str(db) in out.err, (args, out.err)
        assert ("--rebuild" in out.err or "restore" in out.err) and len(out.err.strip().splitlines()) == 1
    r = running.post("/api/search", json={"limit": 3, "like_id": "1"})  # a server started before the damage
    assert r.status_code == 503 and str(db) in r.json()["error"]
    assert running.get("/api/attributes").status_code in (200, 503)  # and it keeps serving
    with pytest.raises(MhtagError, match="--rebuild"):  # a server started after it refuses to start, in one line
        create_app(Settings(db=db))


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MB tmpfs (root only, where mounting is allowed): a disk that fills up, and can be remounted read-only."""
    where = tmp_path / "mnt"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_read_only_folder_and_a_full_disk_are_one_line(tmpfs, demo, monkeypatch, capsys, tiny_run):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, out = run_main(monkeypatch, capsys, "index", demo.parent, "--db", tmpfs / "db", "--model", tiny_run)
    assert code == 1 and "read-only" in out.err and "Traceback" not in out.err, out.err
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    (tmpfs / "filler").write_bytes(b"\0" * (4 * 2**20 - 24_000))  # leaves room for the meta, not the rows
    code, out = run_main(monkeypatch, capsys, "index", demo.parent, "--db", tmpfs / "db", "--model", tiny_run)
    assert code == 1 and "no space left" in out.err and "Traceback" not in out.err, out.err


def test_labels_added_to_an_index_built_without_them(demo, tiny_run, tmp_path, monkeypatch, capsys):
    db = tmp_path / "db"
    code, _ = run_main(monkeypatch, capsys, "index", demo.parent, "--db", db, "--model", tiny_run)
    assert code == 0
    code, out = run_main(monkeypatch, capsys, "index", demo.parent, "--db", db, "--model", tiny_run,
                         "--labels", demo, "--multilabel", "marks")
    assert code == 0, out.err
    rows = open_table(db).to_arrow().to_pylist()
    by_rel = {r["rel"]: r for r in rows}
    first = demo.read_text().splitlines()[1].split(",")
    assert by_rel[first[0]]["label_shape"] == first[1] and len(rows) == 120
    code, out = run_main(monkeypatch, capsys, "search", "--db", db, "--source", "label", "--shape", first[1])
    assert code == 0 and "row(s) match" in out.out


# ---------------------------------------------------------------- 6. file modes


def test_artefacts_keep_the_users_umask(demo, tmp_path, tiny_cfg, monkeypatch):
    from mhtag.index.export import export_index
    from mhtag.training.fit import fit

    old = os.umask(0o022)
    try:
        run = fit(tiny_cfg, demo, out=tmp_path / "run")
        db = tmp_path / "db"
        index_images(demo.parent, db, model=run.dir, options=IndexOptions(workers=0))
        export_index(tmp_path / "x.csv", db)
    finally:
        os.umask(old)
    written = [run.dir / n for n in ("best.pt", "last.pt", "config.json", "schema.json", "metrics.json")]
    written += [db / "meta.json", tmp_path / "x.csv", Path(os.environ["MHTAG_CACHE"]) / "image_checks.json"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ---------------------------------------------------------------- 7. wide CSVs, 8. late config checks


def test_wide_csvs_are_answered_or_refused_by_a_documented_count(demo, tmp_path, monkeypatch, capsys):
    from mhtag.data.labels import MAX_ATTRIBUTES

    rows = demo.read_text().splitlines()[1:21]

    def wide(n: int) -> Path:
        path = demo.parent / f"wide{n}.csv"
        header = "path," + ",".join(f"c{i}" for i in range(n))
        path.write_text("\n".join([header] + [r.split(",")[0] + "," + ",".join("ab"[(i + j) % 2] for i in range(n))
                                              for j, r in enumerate(rows)]) + "\n")
        return path

    code, out = run_main(monkeypatch, capsys, "inspect", wide(300), "--json")
    assert code == 0 and len(json.loads(out.out)["attributes"]) == 300
    code, out = run_main(monkeypatch, capsys, "inspect", wide(MAX_ATTRIBUTES + 1), "--out", tmp_path)
    assert code == 1 and f"at most {MAX_ATTRIBUTES} heads" in out.err


def test_head_weights_and_duplicate_headers_are_refused_naming_them(demo, tmp_path, monkeypatch, capsys):
    for setting, words in (("head_weights={shape: .nan}", "head_weights[shape]"),
                           ("head_weights={shape: -1}", "at least 0"),
                           ("head_weights={nosuch: 2}", "nosuch")):
        code, out = run_main(monkeypatch, capsys, "train", "--labels", demo, "--set", setting, "--out",
                             tmp_path / "run", "--set", "backbone=tiny_cnn")
        assert code == 1 and words in out.err and "Traceback" not in out.err, out.err
        assert not (tmp_path / "run").exists()
    lines = demo.read_text().splitlines()
    twice = demo.parent / "twice.csv"
    twice.write_text("\n".join([lines[0] + ",shape"] + [r + ",x" for r in lines[1:]]) + "\n")
    code, out = run_main(monkeypatch, capsys, "inspect", twice, "--out", tmp_path)
    assert code == 1 and "'shape' more than once" in out.err


# ---------------------------------------------------------------- 9. silent skips


def test_a_dangling_symlink_is_reported_with_the_unreadable_files(demo_copy, tiny_run, tmp_path, monkeypatch, capsys):
    (demo_copy.parent / "images" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    code, out = run_main(monkeypatch, capsys, "index", demo_copy.parent, "--db", tmp_path / "db",
                         "--model", tiny_run)
    assert code == 0 and "dangling.png: dangling symlink" in out.err and "1 unreadable file(s) skipped" in out.err


# ---------------------------------------------------------------- 10. exposure beyond localhost


def test_private_reads_need_the_key_and_hosts_are_checked(indexed, tmp_path):
    db, _ = indexed
    key = tmp_path / "key"
    key.write_text(KEY)
    client = TestClient(create_app(Settings(db=db, api_key_file=key, private=True)), base_url=LOCAL)
    assert client.get("/api/health").status_code == 401
    assert client.post("/api/search", json={}).status_code == 401
    rid = client.post("/api/search", json={"limit": 1}, headers=AUTH).json()["results"][0]["id"]
    assert client.get(f"/api/images/{rid}/thumb").status_code == 401
    client.cookies.set("mhtag_key", KEY)  # what the gallery sets, so that <img> requests carry the key
    assert client.get(f"/api/images/{rid}/thumb").status_code == 200
    assert client.get("/").status_code == 200  # the page itself holds no data
    rebinding = TestClient(create_app(Settings(db=db)), base_url="http://evil.example")
    assert rebinding.get("/api/health").status_code == 400


def test_binding_beyond_localhost_without_private_warns(indexed, monkeypatch, capsys):
    import uvicorn

    db, _ = indexed
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    code, out = run_main(monkeypatch, capsys, "serve", "--db", db, "--host", "0.0.0.0")
    assert code == 0 and served[0]["host"] == "0.0.0.0" and "--private" in out.err and "warning" in out.err
    code, out = run_main(monkeypatch, capsys, "serve", "--db", db)
    assert code == 0 and "warning" not in out.err
    code, out = run_main(monkeypatch, capsys, "serve", "--db", db, "--private")
    assert code == 1 and "--api-key-file" in out.err
