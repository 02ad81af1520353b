#!/usr/bin/env bash
# A zoom video: every 10 steps the image is zoomed in 2% and turned half a degree, then optimised on.
# Frames go to a folder (frame-00001.png, ...); add --video zoom.mp4 to encode them with ffmpeg instead.
#   examples/zoom.sh [PROMPT] [FRAMES_DIR] [more vqclip options...]
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
prompt=${1:-"an endless spiral staircase ^ a spiral galaxy"}
frames=${2:-zoom_frames}
shift $(( $# < 2 ? $# : 2 ))
"$VQCLIP" "$prompt" --steps 300 --frames-every 10 --zoom 1.02 --rotate 0.5 --frames "$frames" "$@"
