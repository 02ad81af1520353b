# Sourced by the example scripts: which vqclip to run, in $VQCLIP.
# $VQCLIP if set, else `vqclip` on the PATH, else the checkout's .venv (what `make` installs).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${VQCLIP:-}" ]; then
  VQCLIP=$(command -v vqclip || true)
  [ -n "$VQCLIP" ] || VQCLIP=$here/.venv/bin/vqclip
  if [ ! -x "$VQCLIP" ]; then
    echo "vqclip is not installed: run make in $here (or pip install -e .), or set VQCLIP=/path/to/vqclip." >&2
    exit 127
  fi
fi
