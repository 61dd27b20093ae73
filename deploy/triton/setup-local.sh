#!/usr/bin/env bash
# A local, CPU-only Triton Inference Server for trying (and testing) a repository written by
# `rnnkit deploy triton`, without Docker: the `tritonserver` binary that ships in the
# nvidia-pytriton wheel (Triton 2.51, Linux x86-64, glibc >= 2.35), with its Python backend only
# (no onnxruntime backend: the onnxruntime-backend model of the repository needs NVIDIA's image).
#
#   bash deploy/triton/setup-local.sh [DIR]        (default DIR: .venv-triton)
#   DIR/bin/rnnkit-tritonserver --model-repository=REPO --load-model=NAME_python ...
#
# DIR becomes a virtual environment holding what the Python backend's stub runs the model with
# (numpy < 2: with numpy 2 the 0.7.0 stub returns empty outputs; onnxruntime) and the server
# tree with the stub for this Python version in backends/python.
set -euo pipefail
DIR=${1:-.venv-triton}
PYTHON=${PYTHON:-python3}
PYTRITON=nvidia-pytriton==0.7.0
# The binary starts (its libraries resolve): --help lists its options (and exits 1).
starts() {
  local usage
  usage=$("$DIR/bin/rnnkit-tritonserver" --help 2>&1 || true)
  [[ $usage == *--model-repository* ]]
}
if [ -x "$DIR/bin/rnnkit-tritonserver" ] && starts; then
  exit 0
fi
test -x "$DIR/bin/python" || "$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install -q --upgrade pip
"$DIR/bin/python" -m pip install -q "numpy<2" "onnxruntime>=1.20"
# --no-deps: only the server tree is wanted, not pytriton's own Python API and its dependencies
"$DIR/bin/python" -m pip install -q --no-deps "$PYTRITON"
SITE=$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
VERSION=$("$DIR/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SERVER="$DIR/tritonserver"
rm -rf "$SERVER"
cp -r "$SITE/pytriton/tritonserver" "$SERVER"
STUB="$SERVER/python_backend_stubs/$VERSION/triton_python_backend_stub"
test -f "$STUB" || { echo "error: $PYTRITON has no Python backend stub for Python $VERSION" >&2; exit 1; }
cp "$STUB" "$SERVER/backends/python/"
ABS=$(cd "$DIR" && pwd)
cat > "$DIR/bin/rnnkit-tritonserver" <<SH
#!/usr/bin/env bash
# tritonserver from $PYTRITON, CPU only, with this environment's Python for the Python backend.
export LD_LIBRARY_PATH="$SITE/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="$ABS/bin:\$PATH"
exec "$ABS/tritonserver/bin/tritonserver" --backend-directory="$ABS/tritonserver/backends" \\
  --cache-directory="$ABS/tritonserver/caches" --allow-gpu-metrics=false \\
  --backend-config=python,shm-default-byte-size=4194304 "\$@"
SH
chmod +x "$DIR/bin/rnnkit-tritonserver"
starts || { echo "error: $DIR/bin/rnnkit-tritonserver does not start: run it to see why" >&2; exit 1; }
echo "Triton (from $PYTRITON) ready: $DIR/bin/rnnkit-tritonserver --model-repository=REPO"
