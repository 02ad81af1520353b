#!/usr/bin/env bash
# The standard benchmark set (`make bench`). Random weights: the real ones cost the same and need no
# download. Prints JSON lines (each row carries the machine: CPU or GPU model, fast bf16/fp16, load);
# benchmarks/RESULTS.md records them in a table per machine kind. Timings taken while `uptime` shows a
# load above the core count are not the machine's: check the "load" field of each row.
set -euo pipefail
cd "$(dirname "$0")/.."
VQCLIP=${VQCLIP:-.venv/bin/vqclip}
PY=${PY:-.venv/bin/python}
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $($PY -c 'import torch; print(torch.__version__)'), load $(cut -d' ' -f1 /proc/loadavg)"
"$VQCLIP" bench --json --steps 3 --size 128 --size 256 --size 384 --precision fp32 --precision bf16
"$VQCLIP" bench --json --steps 3 --size 256 --precision fp32 --precision bf16 --threads 1   # CPU seconds: load-proof
"$VQCLIP" bench --json --steps 1 --size 768 --precision fp32 --precision bf16 --max-memory 6G
"$VQCLIP" bench --json --steps 2 --size 384 --precision fp32 --max-memory 3G
"$PY" benchmarks/largest_square.py
"$PY" benchmarks/sliding.py --sizes 32 64
"$PY" benchmarks/upscale.py --size 192 --tiles 0 64
