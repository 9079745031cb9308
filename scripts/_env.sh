# Shared by scripts/test.sh and scripts/demo.sh: create or refresh .venv and install hyperlapse.
# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[hyperlapse] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
TORCH_SPEC="${HYPERLAPSE_TORCH:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$1]"
