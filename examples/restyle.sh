#!/usr/bin/env bash
# Restyle a video frame by frame: each frame is the init image of a short run, and each starts from the
# previous frame's result blended towards its own codes (--blend), so the style holds from frame to frame.
# The video keeps the input's frame rate and audio; the frames are kept in OUT.frames/ until it is written,
# and a run that was stopped resumes with --skip-existing.
#   examples/restyle.sh INPUT.mp4|FRAMES_DIR|'GLOB' [PROMPT] [OUT.mp4] [more vqclip options...]
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
if [ $# -lt 1 ]; then
  echo "usage: $0 INPUT.mp4|FRAMES_DIR|'GLOB' [PROMPT] [OUT.mp4] [more vqclip options...]" >&2
  exit 2
fi
input=$1
prompt=${2:-"an oil painting by van gogh"}
video=${3:-restyled.mp4}
shift $(( $# < 3 ? $# : 3 ))
"$VQCLIP" restyle "$input" "$prompt" --video "$video" --steps 40 --blend 0.5 "$@"
