#!/usr/bin/env bash
# Generate one image per line of a prompt file into a folder, with a manifest.jsonl.
# Reruns resume where a crashed or interrupted run stopped (--skip-existing).
#   examples/batch.sh [PROMPTS] [OUTDIR] [more vqclip options...]
set -euo pipefail
prompts=${1:-examples/prompts.txt}
outdir=${2:-out}
shift $(( $# < 2 ? $# : 2 ))
"${VQCLIP:-vqclip}" batch "$prompts" --outdir "$outdir" --skip-existing --seed 1 "$@"
echo "manifest: $outdir/manifest.jsonl" >&2
