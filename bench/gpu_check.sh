#!/usr/bin/env bash
# GPU check for issue 9: the real-size Qwen-Image-Edit transformer (60 layers, 24 x 128 heads,
# joint_attention_dim 3584) with random bf16 weights, no download. Times a 1024^2 edit's
# denoising step (studio engine options vs plain diffusers defaults, with and without CFG
# batching) and LoRA training samples/s at the seed's setting, with MFU. Prints JSON lines
# and writes $OUT/gpu_check.json (or --out PATH). Details: bench/gpu_check.py's docstring.
#
# The lent GPU machine has torch, peft, transformers and accelerate but no diffusers and no
# internet, so diffusers travels as wheels. Once, here (a machine with PyPI):
#   echo /wheels/ >> .git/info/exclude      # (also in .gitignore) never committed
#   .venv/bin/python -m pip download --no-deps -d wheels/ diffusers==0.42.1 importlib_metadata
# (diffusers is pure Python; importlib_metadata is its one requirement missing there.)
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=["wheels"],
# timeout_s=600). This script installs wheels/*.whl into /tmp/site when wheels/ exists.
# It should finish in about 6-8 minutes on an H100 (--budget-s skips cases that would start
# after 7 minutes; each result is written as soon as it is measured).
#
# CPU smoke test at reduced depth and width (seconds):
#   bash bench/gpu_check.sh --device cpu --layers 2 --size 256
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-wheels}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=${SITE:-/tmp/site}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

# The project's venv where it exists (here); the machine's python3 (the one with torch) there.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_check.py "$@"
