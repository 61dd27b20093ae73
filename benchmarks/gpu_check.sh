#!/usr/bin/env bash
# The CUDA checks, run on a lent GPU machine (which reaches no package index) in the repo root,
# after ../shared/tools/ort-gpu-parts' parts were copied to /tmp/parts one call at a time and with
# the wheels of benchmarks/gpu-wheels.txt carried in .whl/. Writes $OUT/gpu-tests.log and
# $OUT/gpu_check.json (benchmarks/gpu_check.py).
set -u
if [ ! -d /tmp/site/onnxruntime ]; then
  cat /tmp/parts/part* > /tmp/ort.tar.zst && mkdir -p /tmp/site && python3 -c "import pyarrow as pa, tarfile, io; tarfile.open(fileobj=io.BytesIO(pa.input_stream('/tmp/ort.tar.zst', compression='zstd').read())).extractall('/tmp/site')" || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow.db
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o, torch; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers()[:2], 'torch', torch.__version__, torch.cuda.get_device_name())"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_runtime.py tests/test_precision.py tests/test_serve.py 2>&1 | tee "${OUT:-/tmp}/gpu-tests.log" | tail -25
timeout 300 python3 -m benchmarks.gpu_check --json "${OUT:-/tmp}/gpu_check.json"
