#!/usr/bin/env bash
# Stream every step's image into ffmpeg: no temporary frame folder.
#   examples/to_video.sh [PROMPT] [VIDEO] [more vqclip options...]
# When vqclip fails, its own message and exit code are what you see (not ffmpeg's "End of file").
# Offline, or to try it in seconds: add the shapes world's models, --vqgan shapes_f8 --clip shapes-a --size 128.
set -uo pipefail
. "$(dirname "$0")/find-vqclip.sh"  # sets $VQCLIP: $VQCLIP, else vqclip on the PATH, else .venv
prompt=${1:-"a lighthouse at dusk"}
video=${2:-lighthouse.mp4}
shift $(( $# < 2 ? $# : 2 ))
# Which ffmpeg: the one on the PATH, else the static build that vqclip's install brought (imageio-ffmpeg).
ffmpeg=$(command -v ffmpeg || "$(dirname "$VQCLIP")/python" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())' 2>/dev/null || true)
if [ -z "$ffmpeg" ]; then
  echo "to_video.sh needs ffmpeg: install it, or pip install imageio-ffmpeg beside vqclip." >&2
  exit 127
fi
ffmpeg_log=$(mktemp)
trap 'rm -f "$ffmpeg_log"' EXIT
"$VQCLIP" "$prompt" --frames - --frames-every 1 --quiet "$@" \
  | "$ffmpeg" -loglevel error -y -f image2pipe -framerate 30 -i - -pix_fmt yuv420p "$video" 2>"$ffmpeg_log"
status=("${PIPESTATUS[@]}")
if [ "${status[0]}" -ne 0 ]; then
  exit "${status[0]}"  # vqclip has said why on stderr
fi
if [ "${status[1]}" -ne 0 ]; then
  cat "$ffmpeg_log" >&2
  exit "${status[1]}"
fi
echo "$video"
