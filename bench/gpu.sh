#!/usr/bin/env bash
# The gpu suite (ANCHORS.md sizes, bf16) on the device's GPU (H100 or H200), one device call per line:
#
#   here, once:   bash ../shared/tools/gpu-prep.sh          # .whl/: keras, namex, optree (git-ignored)
#   device run:   bash bench/gpu.sh jax                     # carry [".whl"]; about 9 minutes
#   device run:   bash bench/gpu.sh anchors,torch           # timm + akamaster anchors, then Keras' torch backend
#   here:         python -m bench.bench --merge /work/.device/.../h200-*.json --out bench/results/h200-DATE.json
#
# Each call writes $OUT/GPU-WORKERS-DATE.{json,md,profiles.txt} (bench/results/ without $OUT).
# A worker still running at the deadline (DEADLINE seconds, default 540: a call may run 600)
# is stopped and keeps every case it finished; run the rest with e.g.
#   bash bench/gpu.sh jax --only 'skip_*'
# and merge: a case measured again replaces its earlier result. Extra arguments go to bench.bench.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${1:-jax,anchors,torch}
shift || true
out=${OUT:-bench/results}
if ! python3 -c "import keras" 2>/dev/null; then
  ls .whl/keras-*.whl >/dev/null 2>&1 || { echo "no keras and no .whl/: run ../shared/tools/gpu-prep.sh here and carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
# file names start with the GPU's model (h100, h200, ...; "gpu" where nvidia-smi does not say)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE '\b[A-Z][0-9]{2,4}\b' | head -1 | tr 'A-Z' 'a-z')
tag=${gpu:-gpu}-${workers//,/-}-$(date -u +%Y%m%dT%H%M%SZ)
python3 -m bench.bench --suite gpu --backends "$workers" --deadline "${DEADLINE:-540}" --profile \
  --out "$out/$tag.json" "$@"
