# Sourced by quickstart.sh and test.sh: create .venv if missing and install the project into it.
# torch/torchvision are pinned to releases that install from local wheels where a machine has them
# (pyproject accepts any torch>=2.4, torchvision>=0.19).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "installing torch and torchvision (about a minute)"
  "${PIP[@]}" "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" 2>&1 | grep -v "^WARNING: Location" || true
fi
echo "installing the project${EXTRAS:+ with [$EXTRAS]}"
"${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import poisongen, segtrain, torch" || { echo "install failed" >&2; exit 1; }
