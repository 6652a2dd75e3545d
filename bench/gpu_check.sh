#!/usr/bin/env bash
# Every GPU figure the benches take, in one run sized for ≤ 8 minutes on one H100/H200: CPN training steps
# (bench/train_step.py's rows), CAM inference (bench/infer.py), IRN's random walk on CUDA (bench/random_walk.py),
# DeepLab training steps and inference (bench/seg_train_step.py, bench/seg_infer.py). Each bench appends its
# table, with the device's name, to bench/RESULTS.md. Needs a CUDA GPU; never part of CI or `make test`.
#   bash bench/gpu_check.sh [PYTHON]       (default .venv/bin/python)
set -uo pipefail
PY=${1:-.venv/bin/python}
cd "$(dirname "$0")/.."
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_check.sh needs a CUDA GPU')" || exit 1
BENCH_SECONDS=150  # each bench's limit: five of them stay under 8 minutes with start-up
failed=()
for bench in train_step infer random_walk seg_train_step seg_infer; do
  echo "== bench.$bench"
  start=$SECONDS
  timeout "$BENCH_SECONDS" "$PY" -m "bench.$bench" --device cuda || failed+=("$bench")
  echo "   $(( SECONDS - start )) s"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed or past ${BENCH_SECONDS} s: ${failed[*]}" >&2
  exit 1
fi
