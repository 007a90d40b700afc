"""Benchmark scripts import the library as it is today (they are not run here: they time real work)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

from mhtag.models.checkpoint import load_checkpoint

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # as `python benchmarks/x.py` runs it: siblings import
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


# what the device machine's image lacks and benchmarks/gpu_pack.py does not carry (too large for its 64 MiB)
NOT_ON_THE_DEVICE = ("lancedb", "faiss", "fastapi", "uvicorn", "cleanlab", "open_clip", "ray", "lance")
BLOCK_AND_RUN = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError('not on the device machine: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {bench!r})
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name='__main__')
"""


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir() and not os.environ.get("CI"), reason="needs ../shared/datasets/fashion12k")
def test_the_gpu_protocol_runs_whole_without_the_packages_the_device_lacks(tmp_path):
    """`gpu.py --smoke`: candidates, the choice on val, the ensemble, test once, encoding and the weights in pieces,
    on a CPU and tiny data, importing nothing the device image lacks; a GPU session then spends no time on it."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    args = ["--smoke", "--data", str(SHARED), "--workers", "0", "--results", str(tmp_path), "--bring-back"]
    code = BLOCK_AND_RUN.format(blocked=set(NOT_ON_THE_DEVICE), bench=str(bench), script=str(bench / "gpu.py"),
                                args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MHTAG_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    trained = [n for n, c in report["candidates"].items() if "val" in c]
    assert len(trained) == 2 and report["chosen_on_val"]["single"] in trained
    assert report["chosen_on_val"]["single"] == max(trained, key=lambda n: (
        report["candidates"][n]["val"]["mean_accuracy"], report["candidates"][n]["val"]["mean_macro_f1"]))
    assert set(report["test"]) == {"single", "ensemble"} and report["ensemble"]["members"] == trained
    looked = report["test"]["single"]
    assert set(looked["ece_floor_p95"]) == set(looked["ece"]) and all(v > 0 for v in looked["ece_floor_p95"].values())
    assert report["encode"]["images"] == 144  # 48 rows of each split
    pieces = sorted(tmp_path.glob("gpu_*_best.pt.part*"))
    assert [p.name for p in pieces] == report["brought_back"] and len(pieces) >= 2
    joined = tmp_path / "best.pt"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    assert load_checkpoint(joined)["backbone"] == "efficientnet_lite2"
