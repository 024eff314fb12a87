#!/usr/bin/env bash
# The README's main command: set up .venv (if missing), install the project, and run the main job on
# the built-in synthetic street scenes: generate them, poison them with NNI, write Poisoned Test sets
# near and far from the victim, and check the poisoned copy against its manifest.
# (Training and evaluation with segtrain join this script as that part lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
export POISONGEN_DATA="${POISONGEN_DATA:-$PWD/data}"
RUNS="${RUNS:-$PWD/runs/quickstart}"
mkdir -p "$RUNS"

echo "== 1. the synthetic street scenes (generated under $POISONGEN_DATA/synthetic on first use)"
poisongen info --src synthetic --check

echo "== 2. poison 10% of the training split with Nearest Neighbor Injection (car -> road)"
poisongen nni --src synthetic --rate 0.1 --out "$RUNS/nni" --overwrite

echo "== 3. Poisoned Test sets: trigger near the victim (d < 30 px) and far from it (d >= 45 px)"
poisongen testset --src synthetic --strategy nearest --upper 30 --out "$RUNS/test_near" --overwrite -q
poisongen testset --src synthetic --strategy random --lower 45 --out "$RUNS/test_far" --overwrite -q

echo "== 4. audit: re-derive every poisoned file from the source and the manifest"
poisongen verify "$RUNS/nni" --src synthetic
first=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['samples'][0]['id'])" "$RUNS/nni/manifest.json")
poisongen show "$RUNS/nni" "$first" --png "$RUNS/nni_example.png"
echo "done: poisoned copy in $RUNS/nni, test sets in $RUNS/test_near and $RUNS/test_far"
