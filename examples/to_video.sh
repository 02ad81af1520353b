#!/usr/bin/env bash
# Stream every step's image into ffmpeg: no temporary frame folder.
#   examples/to_video.sh [PROMPT] [VIDEO] [more vqclip options...]
# When vqclip fails, its own message and exit code are what you see (not ffmpeg's "End of file").
set -uo pipefail
prompt=${1:-"a lighthouse at dusk"}
video=${2:-lighthouse.mp4}
shift $(( $# < 2 ? $# : 2 ))
ffmpeg_log=$(mktemp)
trap 'rm -f "$ffmpeg_log"' EXIT
"${VQCLIP:-vqclip}" "$prompt" --frames - --frames-every 1 --quiet "$@" \
  | ffmpeg -loglevel error -y -f image2pipe -framerate 30 -i - -pix_fmt yuv420p "$video" 2>"$ffmpeg_log"
status=("${PIPESTATUS[@]}")
if [ "${status[0]}" -ne 0 ]; then
  exit "${status[0]}"  # vqclip has said why on stderr
fi
if [ "${status[1]}" -ne 0 ]; then
  cat "$ffmpeg_log" >&2
  exit "${status[1]}"
fi
echo "$video"
