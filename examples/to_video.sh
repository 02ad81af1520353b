#!/usr/bin/env bash
# Stream every step's image into ffmpeg: no temporary frame folder.
#   examples/to_video.sh [PROMPT] [VIDEO] [more vqclip options...]
set -euo pipefail
prompt=${1:-"a lighthouse at dusk"}
video=${2:-lighthouse.mp4}
shift $(( $# < 2 ? $# : 2 ))
"${VQCLIP:-vqclip}" "$prompt" --frames - --frames-every 1 --quiet "$@" \
  | ffmpeg -loglevel error -y -f image2pipe -framerate 30 -i - -pix_fmt yuv420p "$video"
echo "$video"
