#!/usr/bin/env bash
# Restyle a video frame by frame: each frame is the init image of a short run, and each starts from the
# previous frame's result blended towards its own codes (--blend), so the style holds from frame to frame.
# The video keeps the input's frame rate and audio; the frames are kept in OUT.frames/ until it is written,
# and a run that was stopped resumes with --skip-existing.
#   examples/restyle.sh INPUT.mp4|FRAMES_DIR|'GLOB' [PROMPT] [OUT.mp4] [more vqclip options...]
# Offline, or to try it in seconds: add the shapes world's models, --vqgan shapes_f8 --clip shapes-a --size 128.
set -euo pipefail
. "$(dirname "$0")/find-vqclip.sh"  # sets $VQCLIP: $VQCLIP, else vqclip on the PATH, else .venv
if [ $# -lt 1 ]; then
  echo "usage: $0 INPUT.mp4|FRAMES_DIR|'GLOB' [PROMPT] [OUT.mp4] [more vqclip options...]" >&2
  exit 2
fi
input=$1
prompt=${2:-"an oil painting by van gogh"}
video=${3:-restyled.mp4}
shift $(( $# < 3 ? $# : 3 ))
"$VQCLIP" restyle "$input" "$prompt" --video "$video" --steps 40 "$@"
