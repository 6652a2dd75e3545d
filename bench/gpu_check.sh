#!/usr/bin/env bash
# Every GPU figure the benches take, in one run sized for ≤ 8 minutes on one H100/H200: CPN training steps
# (bench/train_step.py's rows), CAM inference (bench/infer.py), IRN's random walk on CUDA (bench/random_walk.py),
# DeepLab training steps in fp32 and bf16 and inference (bench/seg_train_step.py --amp bf16, bench/seg_infer.py).
# Each bench appends its table, with the device's name, to bench/RESULTS.md; a summary ends the run. Needs a CUDA
# GPU and the packages of requirements.txt (`make install`); never part of CI or `make test`.
#   bash bench/gpu_check.sh [PYTHON]             (default .venv/bin/python)
#   bash bench/gpu_check.sh --dry-run [PYTHON]   the same benches on the CPU at tiny sizes, appending nothing
# The dry run keeps the GPU run's loop shape (more steps than batches per epoch) and takes ~3 min on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
PY=${1:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
  echo "bench/gpu_check.sh: no $PY: run make install first (or name a Python with requirements.txt's packages)" >&2
  exit 1
fi
if ! missing=$("$PY" -c "import bench.infer, bench.random_walk, bench.seg_infer, bench.seg_train_step, pydensecrf" 2>&1); then
  echo "bench/gpu_check.sh: ${missing##*$'\n'}: make install (or $PY -m pip install -r requirements.txt)" >&2
  exit 1
fi

# bench module | its arguments on the GPU | on the CPU for --dry-run (steps > batches per epoch, as on the GPU:
# one batch per epoch, two steps: a warm-up and a timed one)
runs=(
  "train_step|--device cuda|--device cpu --crop 32 --batch 2 --images 2 --steps 1 --workers 1"
  "infer|--device cuda|--device cpu --size 32 48 --images 1 --e2e_images 2"
  "random_walk|--device cuda|--device cpu --size 48 64 --dense-size 48 64 --repeats 1"
  "seg_train_step|--device cuda --amp bf16|--device cpu --crop 32 --batch 2 --images 2 --steps 1 --workers 1"
  "seg_infer|--device cuda|--device cpu --size 32 48 --images 1 --e2e_images 2"
)
if [ $dry_run = 1 ]; then
  results=$(mktemp --suffix=.md)
  trap 'rm -f "$results"' EXIT
  export BENCH_RESULTS=$results # bench/results.py appends here, not to bench/RESULTS.md
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_check.sh needs a CUDA GPU')" || exit 1
  results=bench/RESULTS.md
fi

BENCH_SECONDS=150 # each bench's limit on the GPU
TOTAL_SECONDS=450 # all of them: start-up and the summary included, the run stays under 8 minutes
if [ $dry_run = 1 ]; then
  BENCH_SECONDS=300 # ~100 s in all on 2 quiet cores; a box shared with other jobs takes several times that
  TOTAL_SECONDS=900
fi
lines_before=$( [ -f "$results" ] && wc -l <"$results" || echo 0)
summary=()
failed=0
for run in "${runs[@]}"; do
  IFS='|' read -r bench gpu_args cpu_args <<<"$run"
  args=$([ $dry_run = 1 ] && echo "$cpu_args" || echo "$gpu_args")
  limit=$(( TOTAL_SECONDS - SECONDS < BENCH_SECONDS ? TOTAL_SECONDS - SECONDS : BENCH_SECONDS ))
  if [ "$limit" -le 0 ]; then
    summary+=("$(printf '%-15s skipped: past %s s in all' "$bench" "$TOTAL_SECONDS")")
    failed=1
    continue
  fi
  echo "== python -m bench.$bench $args (at most $limit s)"
  start=$SECONDS
  # shellcheck disable=SC2086  # the arguments split into words
  timeout --kill-after=10 "$limit" "$PY" -m "bench.$bench" $args
  status=$?
  case $status in
    0) outcome=ok ;;
    124 | 137) outcome="timed out after $limit s" ;;
    *) outcome="failed (exit $status)" ;;
  esac
  [ $status = 0 ] || failed=1
  summary+=("$(printf '%-15s %4d s  %s' "$bench" $((SECONDS - start)) "$outcome")")
done

echo
echo "== summary$([ $dry_run = 1 ] && echo ' (--dry-run: CPU, tiny sizes, nothing appended to bench/RESULTS.md)'), $SECONDS s in all"
printf '%s\n' "${summary[@]}"
echo "tables appended to $([ $dry_run = 1 ] && echo 'the scratch results file' || echo "$results"):"
tail -n +"$((lines_before + 1))" "$results" | grep '^### ' | sed 's/^/  /' || echo "  none"
exit $failed
