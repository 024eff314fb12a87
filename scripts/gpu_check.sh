#!/usr/bin/env bash
# The GPU check of issue #14 (<= 8 minutes on one H200): the CUDA-marked tests, then the training benchmark at
# paper scale (DeepLabV3-R50 and PSPNet-R50, 512x1024 crops, batch 8; segtrain vs the plain PyTorch loop, fp32
# vs AMP (bf16) + channels_last, peak memory). Every part runs under its own timeout and a failed part does not
# stop the others; the summary is $OUT/gpu_check.json (bench/gpu_check/ when OUT is unset), with every part's
# exit code and time, beside each part's own JSON.
#
# Python: $PYTHON, else .venv/bin/python, else python3 - whichever imports torch - with the repository on
# PYTHONPATH (no install: the device machine may have no package index). Where none has torch it tries
# `pip install torch==2.14.1 torchvision==0.29.1` into .venv-gpu and records the failure if that cannot run.
#
# GPU_CHECK_DRY=1 runs the same parts on the CPU at a tiny size, with light backbones (ResNet18 PSPNet,
# MobileNetV3 DeepLabV3) and only the test files that hold cuda tests (tests/segtrain/test_gpu_check.py does).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY="${GPU_CHECK_DRY:-0}"
DEST="${OUT:-$ROOT/bench/gpu_check}"
mkdir -p "$DEST"
START=$(date +%s)
PARTS="$DEST/parts.tsv"
: > "$PARTS"

has_torch() { [ -n "$1" ] && "$1" -c "import torch, torchvision" >/dev/null 2>&1; }
PY=""
for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
  if has_torch "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  echo "no Python with torch found; trying pip install torch==2.14.1 into .venv-gpu" >&2
  python3 -m venv --system-site-packages "$ROOT/.venv-gpu" \
    && "$ROOT/.venv-gpu/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
    && PY="$ROOT/.venv-gpu/bin/python"
fi
if [ -z "$PY" ]; then
  printf '{"error": "no Python with torch, and pip could not install torch==2.14.1"}\n' > "$DEST/gpu_check.json"
  echo "gpu_check: no Python with torch" >&2
  exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

part() {  # part NAME TIMEOUT_S COMMAND...: run with a timeout, record exit code and seconds
  local name="$1" limit="$2" t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (at most ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" > "$DEST/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$PARTS"
  tail -n 3 "$DEST/$name.log" >&2
}

if [ "$DRY" = "1" ]; then  # the CPU at a tiny size, light backbones, only the files holding cuda tests
  DEVICE=cpu; SIZE=32x64; BATCH=2; STEPS=1; WARMUP=1; REPEAT=1; TRAIN=4; VAL=2; WORKERS=0; T_TEST=400; T_BENCH=300
  TESTS=(tests/segtrain/test_cuda_paths.py tests/cli/test_segtrain_run.py)
  declare -A BACKBONE=([deeplabv3]=mobilenet_v3_large [pspnet]=resnet18)
else
  DEVICE=cuda; SIZE=512x1024; BATCH=8; STEPS=10; WARMUP=3; REPEAT=2; TRAIN=24; VAL=4; WORKERS=6; T_TEST=150; T_BENCH=75
  TESTS=(tests)
  declare -A BACKBONE=([deeplabv3]=resnet50 [pspnet]=resnet50)
fi

part cuda_tests "$T_TEST" "$PY" -m pytest -m cuda -q -p no:cacheprovider "${TESTS[@]}"

for arch in deeplabv3 pspnet; do
  for mode in fp32 amp_cl; do
    if [ "$mode" = fp32 ]; then flags=(--no-amp --no-channels-last); else flags=(--amp --channels-last); fi
    part "bench_${arch}_${mode}" "$T_BENCH" "$PY" scripts/bench_segtrain.py --arch "$arch" --backbone "${BACKBONE[$arch]}" \
      --size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --repeat "$REPEAT" --train "$TRAIN" \
      --val "$VAL" --workers "$WORKERS" --device "$DEVICE" --no-eval "${flags[@]}" \
      --work "$DEST/work" --out "$DEST/bench_${arch}_${mode}.json"
  done
done

"$PY" - "$DEST" "$START" "$DRY" <<'PYEOF'
import json, sys, time
from pathlib import Path

dest, start, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
parts = {}
for line in (dest / "parts.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    parts[name] = {"exit_code": int(rc), "seconds": int(secs), "timed_out": rc in ("124", "137")}
bench = {}
for arch in ("deeplabv3", "pspnet"):
    row = {}
    for mode in ("fp32", "amp_cl"):
        f = dest / f"bench_{arch}_{mode}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            s = r["summary"]["train"]
            peaks = {k: max((x.get("peak_mem_mib") or 0) for x in r["train"][k]) or None for k in ("segtrain", "plain")}
            row[mode] = {"segtrain_img_s": s["segtrain_best"], "plain_img_s": s["plain_best"],
                         "segtrain_vs_plain": s["ratio_best"], "pair_ratios_median": s["ratio_pairs_median"],
                         "peak_mem_mib": peaks, "amp_dtype": r["config"]["amp_dtype"], "device": r["machine"]["device"]}
    if "fp32" in row and "amp_cl" in row:
        row["amp_cl_vs_fp32"] = round(row["amp_cl"]["segtrain_img_s"] / row["fp32"]["segtrain_img_s"], 3)
    bench[arch] = row
goals = {arch: {"segtrain_vs_plain_ge_1.0": all(m.get("segtrain_vs_plain", 0) >= 1.0 for k, m in row.items() if isinstance(m, dict)),
                "amp_cl_vs_fp32_ge_1.5": row.get("amp_cl_vs_fp32", 0) >= 1.5} for arch, row in bench.items()}
out = {"dry_run": dry, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "total_seconds": int(time.time()) - start,
       "parts": parts, "bench": bench, "goals": goals,
       "ok": all(p["exit_code"] == 0 for p in parts.values())}
(dest / "gpu_check.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps({"ok": out["ok"], "total_seconds": out["total_seconds"],
                  "parts": {k: v["exit_code"] for k, v in parts.items()}}))
sys.exit(0 if out["ok"] else 1)
PYEOF
