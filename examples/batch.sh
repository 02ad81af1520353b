#!/usr/bin/env bash
# Generate one image per line of a prompt file into a folder, with a manifest.jsonl.
# Reruns resume where a crashed or interrupted run stopped (--skip-existing).
#   examples/batch.sh [PROMPTS] [OUTDIR] [more vqclip options...]
# Offline, or to try it in seconds: add the shapes world's models, --vqgan shapes_f8 --clip shapes-a --size 128.
set -euo pipefail
. "$(dirname "$0")/find-vqclip.sh"  # sets $VQCLIP: $VQCLIP, else vqclip on the PATH, else .venv
prompts=${1:-examples/prompts.txt}
outdir=${2:-out}
shift $(( $# < 2 ? $# : 2 ))
"$VQCLIP" batch "$prompts" --outdir "$outdir" --skip-existing --seed 1 "$@"
echo "manifest: $outdir/manifest.jsonl" >&2
