#!/usr/bin/env bash
# A zoom video: every 10 steps the image is zoomed in 2% and turned half a degree, then optimised on.
# Frames go to a folder (frame-00001.png, ...); add --video zoom.mp4 to encode them with ffmpeg instead.
#   examples/zoom.sh [PROMPT] [FRAMES_DIR] [more vqclip options...]
# Offline, or to try it in seconds: add the shapes world's models, --vqgan shapes_f8 --clip shapes-a --size 128.
set -euo pipefail
. "$(dirname "$0")/find-vqclip.sh"  # sets $VQCLIP: $VQCLIP, else vqclip on the PATH, else .venv
prompt=${1:-"an endless spiral staircase ^ a spiral galaxy"}
frames=${2:-zoom_frames}
shift $(( $# < 2 ? $# : 2 ))
"$VQCLIP" "$prompt" --steps 300 --frames-every 10 --zoom 1.02 --rotate 0.5 --frames "$frames" "$@"
