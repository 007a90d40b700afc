#!/usr/bin/env bash
# On the device machine, carrying .gpu/ from benchmarks/gpu_pack.py: install the carried wheels beside the image's
# own packages (no network there), unpack fashion12k, run benchmarks/gpu.py; its JSON, log and the chosen run's
# weights (in pieces: cat gpu_*_best.pt.part* > best.pt) land in $OUT. Extra arguments go to gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MHTAG_CACHE=/tmp/mhtag-cache
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out" /tmp/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
# Python's own xz reader: the image may have no xz program
python3 -c "import tarfile; tarfile.open('.gpu/fashion12k.tar.xz').extractall('/tmp/data', filter='data')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm, numpy, pandas, sklearn; print('torch', torch.__version__, 'timm', timm.__version__,
'numpy', numpy.__version__, 'pandas', pandas.__version__, 'sklearn', sklearn.__version__)"
python3 benchmarks/gpu.py --data /tmp/data/fashion12k --results "$out" --bring-back "$@" 2>&1 | tee "$out/gpu.log"
