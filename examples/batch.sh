#!/usr/bin/env bash
# Generate one image per line of a prompt file into a folder, with a manifest.jsonl.
# Reruns resume where a crashed or interrupted run stopped (--skip-existing).
#   examples/batch.sh [PROMPTS] [OUTDIR] [more vqclip options...]
# Offline, or to try it in seconds: add the shapes world's models, --vqgan shapes_f8 --clip shapes-a --size 128.
set -euo pipefail
# Which vqclip: $VQCLIP, else `vqclip` on the PATH, else the checkout's .venv (what `make` installs).
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${VQCLIP:-}" ]; then
  VQCLIP=$(command -v vqclip || true)
  [ -n "$VQCLIP" ] || VQCLIP=$here/.venv/bin/vqclip
  if [ ! -x "$VQCLIP" ]; then
    echo "vqclip is not installed: run make in $here (or pip install -e .), or set VQCLIP=/path/to/vqclip." >&2
    exit 127
  fi
fi
prompts=${1:-examples/prompts.txt}
outdir=${2:-out}
shift $(( $# < 2 ? $# : 2 ))
"$VQCLIP" batch "$prompts" --outdir "$outdir" --skip-existing --seed 1 "$@"
echo "manifest: $outdir/manifest.jsonl" >&2
