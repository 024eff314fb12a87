#!/usr/bin/env bash
# Render docs/img/attack_*.png: one `poisongen show` panel per attack on the synthetic set
# (`poisongen synth --out /tmp/syn --train 60 --val 20`, seed 0, 256x512), each quantised to 256
# colours (median cut, no dithering) only to keep the docs small.
#   scripts/make_attack_figures.sh [SYN=/tmp/syn] [WORK=/tmp/attack_figures]
set -euo pipefail
cd "$(dirname "$0")/.."
# needs `poisongen` and a `python` with Pillow on PATH, e.g. PATH=.venv/bin:$PATH
SYN=${1:-/tmp/syn}
WORK=${2:-/tmp/attack_figures}
[ -f "$SYN/manifest.json" ] || [ -d "$SYN/leftImg8bit" ] || poisongen synth --out "$SYN" --train 60 --val 20 -q
mkdir -p "$WORK" docs/img
TARGET_IMAGE=gridville_000003_000019  # a plain street scene: the badnets target label

fig() {  # fig NAME COMMAND...: run the attack into WORK/NAME, show its first poisoned sample
  local name=$1; shift
  "$@" --src "$SYN" --out "$WORK/$name" --seed 0 -q --overwrite > /dev/null
  local id
  id=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['samples'][0]['id'])" "$WORK/$name/manifest.json")
  poisongen show "$WORK/$name" "$id" --png "docs/img/attack_$name.png" > /dev/null
  python - "docs/img/attack_$name.png" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(sys.argv[1], optimize=True)
PY
  echo "docs/img/attack_$name.png <- $* ($id)"
}

fig baseline poisongen baseline --rate 0.1
fig nni poisongen nni --rate 0.1
fig prl poisongen prl --rate 0.1
fig badnets poisongen badnets --rate 0.1 --target-image "$TARGET_IMAGE"
fig fgba_line poisongen fgba --rate 0.1 --matrix person:car
fig fgba_semantic poisongen fgba --rate 0.1 --matrix all:road --semantic-trigger building
fig o2o poisongen o2o --rate 0.1 --victim car --target truck
fig o2b poisongen o2b --rate 0.1 --victim car --target road
fig b2o poisongen b2o --rate 0.1 --victim sidewalk --target car
fig b2b poisongen b2b --rate 0.1 --victim sidewalk --target road
fig instance poisongen instance --rate 0.1 --victim car --target road --k 1
fig conditional poisongen conditional --rate 0.1 --victim car --target road --condition person
fig testset_fgba poisongen testset --attack fgba --matrix all:road
