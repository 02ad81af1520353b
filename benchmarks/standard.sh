#!/usr/bin/env bash
# The standard benchmark set (`make bench`). Random weights: the real ones cost the same and need no
# download. Prints JSON lines; benchmarks/RESULTS.md records them with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VQCLIP=${VQCLIP:-.venv/bin/vqclip}
PY=${PY:-.venv/bin/python}
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $($PY -c 'import torch; print(torch.__version__)')"
"$VQCLIP" bench --json --steps 3 --size 128 --size 256 --size 384 --precision auto --precision fp32
"$VQCLIP" bench --json --steps 1 --size 768 --max-memory 6G
"$VQCLIP" bench --json --steps 2 --size 384 --max-memory 2.8G
"$PY" benchmarks/sliding.py --sizes 32 64
"$PY" benchmarks/upscale.py --size 192 --tiles 0 64
