#!/usr/bin/env bash
# A zoom video: every 10 steps the image is zoomed in 2% and turned half a degree, then optimised on.
# Frames go to a folder (frame-00001.png, ...); add --video zoom.mp4 to encode them with ffmpeg instead.
#   examples/zoom.sh [PROMPT] [FRAMES_DIR] [more vqclip options...]
set -euo pipefail
prompt=${1:-"an endless spiral staircase ^ a spiral galaxy"}
frames=${2:-zoom_frames}
shift $(( $# < 2 ? $# : 2 ))
"${VQCLIP:-vqclip}" "$prompt" --steps 300 --frames-every 10 --zoom 1.02 --rotate 0.5 --frames "$frames" "$@"
