#!/usr/bin/env bash
# Run an experiment grid in the background, logging, resumable: rerun the same command to continue (finished
# cells are skipped, an interrupted one resumes from its last checkpoint).
#
#   scripts/run_grid.sh [CONFIG] [OUT]        CONFIG: a shipped name (default paper-shape-cpu) or a YAML path
#                                             OUT: experiment folder (default runs/<name>)
#   RESULTS=DIR   where the small result files go (default results/<name> in the repository: commit it, and a
#                 fresh clone skips the cells it holds even when OUT is gone)
#   FOREGROUND=1  run in this shell instead of the background
#   then:  tail -f OUT/grid.log;  segtrain experiment CONFIG --out OUT --results RESULTS --dry-run (progress);
#          segtrain report RESULTS --markdown docs/results.md   (after it finished, or any time for the cells done)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh ""  # no extras (its $1), not this script's CONFIG
export PATH="$PWD/.venv/bin:$PATH"
CONFIG="${1:-paper-shape-cpu}"
NAME="$(basename "$CONFIG" .yaml)"
OUT="${2:-runs/$NAME}"
RESULTS="${RESULTS:-results/$NAME}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
mkdir -p "$OUT"
LOG="$OUT/grid.log"
# one grid writer per folder: a second start while one runs is refused
if [ -f "$OUT/grid.pid" ] && kill -0 "$(cat "$OUT/grid.pid")" 2>/dev/null; then
  echo "a grid is already running in $OUT (pid $(cat "$OUT/grid.pid")); tail -f $LOG" >&2
  exit 1
fi
cmd=(segtrain experiment "$CONFIG" --out "$OUT" --results "$RESULTS")
echo "$(date -u +%FT%TZ) start: ${cmd[*]}" >> "$LOG"
if [ -n "${FOREGROUND:-}" ]; then
  "${cmd[@]}" 2>&1 | tee -a "$LOG"
  segtrain report "$RESULTS" --markdown docs/results.md | tee -a "$LOG"
  exit 0
fi
nohup bash -c '"$@" >> "'"$LOG"'" 2>&1 && segtrain report "'"$RESULTS"'" --markdown docs/results.md >> "'"$LOG"'" 2>&1; echo "$(date -u +%FT%TZ) exit $?" >> "'"$LOG"'"' _ "${cmd[@]}" &
echo $! > "$OUT/grid.pid"
echo "running in the background (pid $!): tail -f $LOG"
