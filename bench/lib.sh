# Sourced by the bench scripts: the Python environments they compare against, made on first use.
#   py=$(bench_venv DIR PACKAGE...)   a venv at DIR with PACKAGE... pip-installed; prints its python.
bench_venv() {
  local dir=$1
  shift
  [ -x "$dir/bin/python" ] || { python3 -m venv "$dir" && "$dir/bin/pip" install -q "$@" >&2; }
  echo "$dir/bin/python"
}
# onnxruntime, Pillow and numpy: the Python inference pipeline (infer.sh, infer_contention.sh).
infer_python() { bench_venv bench/.venv-infer onnxruntime==1.31.1 pillow numpy; }
# ... and onnx: onnxruntime's quantization tool (quantize.sh, tile_rss.sh).
quantize_python() { bench_venv bench/.venv-quantize onnxruntime==1.31.1 onnx pillow numpy sympy; }
