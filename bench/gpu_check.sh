#!/usr/bin/env bash
# GPU check for issue 9: the real-size Qwen-Image-Edit transformer (60 layers, 24 x 128 heads,
# joint_attention_dim 3584) with random bf16 weights, no download. First, memory: each card
# preset for one CUDA GPU (24, 32, 48, 80 GB) trained a few steps at the seed's setting on a
# process capped to that card (set_per_process_memory_fraction), placed by the trainer's
# loader with the preset's savers: peak memory vs the memory plan, fits or OOM, samples/s.
# Then times a 1024^2 edit's denoising step (studio engine options vs plain diffusers
# defaults, with and without CFG batching) and LoRA training samples/s at the seed's
# setting, with MFU. Prints JSON lines and writes $OUT/gpu_check.json (or --out PATH).
# Details: bench/gpu_check.py's docstring. Needs ~45 GB of host RAM (one random copy of the
# weights, shared by the memory presets).
#
# The lent GPU machine has torch, peft, transformers and accelerate but no diffusers and no
# internet, so diffusers travels as wheels. Once, here (a machine with PyPI):
#   echo /wheels/ >> .git/info/exclude      # (also in .gitignore) never committed
#   .venv/bin/python -m pip download --no-deps -d wheels/ diffusers==0.42.1 importlib_metadata
# (diffusers is pure Python; importlib_metadata is its one requirement missing there.)
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=["wheels"],
# timeout_s=600). This script installs wheels/*.whl into /tmp/site when wheels/ exists.
# It should finish in about 7-9 minutes on an H100/H200: the memory section ~1.5-3 (no card
# preset starts after --memory-budget-s 180 s), then the edit and training cases (none starts
# after --budget-s 420 s from the start; 2 timed edit steps and 3 training steps per case,
# cut from 3 and 4 to make room). Each result is written as soon as it is measured. Only the
# memory section: --skip-infer --skip-train; without it: --skip-memory.
#
# CPU smoke test at reduced depth and width (about 1.5 minutes on 2 cores; the memory section
# then has no cap and no meter, and offloads 1 of the 2 blocks where a preset offloads):
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
