#!/usr/bin/env bash
# The trainer benchmark on a lent GPU, in one go (bench/RESULTS.md): naive vs ours (compiled) vs cached
# (a later trial at the layer, reading the prefix cache) at layers 7 and 15 of a random-init Llama-8B shape;
# then ours at layer 7 with the two short streams in one batch. Needs torch + transformers only.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 bench/trainer_step.py --device cuda --shape llama8b --compile --prefix-cache --cache-dir "${TMPDIR:-/tmp}"
python3 bench/trainer_step.py --device cuda --shape llama8b --compile --only ours --layers 7 --pack-ratio 0.7 \
    | grep -v '^RESULT'
