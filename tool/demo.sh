#!/usr/bin/env bash
# `make demo`: the real pipeline on the synthetic toy VOC set, on the CPU, end to end:
# toy set → class labels → train_cpn.py → infer_cam.py → evaluation_cam.py, for the trained
# network and for the same network untrained (the baseline the training must beat).
# Usage: tool/demo.sh PYTHON OUT_DIR [TRAIN_STEPS] [DEVICE]   (DEVICE: cpu or cuda, default cpu)
set -euo pipefail
PY=$1
OUT=$2
STEPS=${3:-100}
DEVICE=${4:-cpu}
cd "$(dirname "$0")/.."

VOC="$OUT/VOC2012"
LISTS="$OUT/lists"
COMMON=(--voc12_root "$VOC" --cls_labels "$LISTS/cls_labels.npy" --device "$DEVICE")

echo "== 1/4 toy VOC set and class labels"
[ -d "$VOC/JPEGImages" ] || "$PY" -m voc12.toy "$VOC"
"$PY" voc12/make_cls_labels.py --voc12_root "$VOC" --out_dir "$LISTS"

echo "== 2/4 train_cpn.py: $STEPS steps at crop 64 from a random start (no ImageNet weights here)"
# --momentum 0.9 instead of the reference's 5e-4 quirk: a random start learns too slowly without it.
TRAIN=("${COMMON[@]}" --train_list "$LISTS/train.txt" --weights none --crop_size 64 --resize_long 64 96
       --batch_size 4 --num_workers 1 --max_epoches 100 --lr 0.01 --momentum 0.9 --out_dir "$OUT/CPN"
       --log_every 25)
"$PY" train_cpn.py "${TRAIN[@]}" --session_name untrained --max_steps 0
"$PY" train_cpn.py "${TRAIN[@]}" --session_name toy --max_steps "$STEPS" --resume auto

for RUN in untrained toy; do
  echo "== 3/4 infer_cam.py ($RUN network): CAMs, label PNGs, CRF pseudo labels, visualisations"
  "$PY" infer_cam.py "${COMMON[@]}" --weights "$OUT/CPN/$RUN.pth" --infer_list "$LISTS/val.txt" \
      --num_workers 1 --out_cam "$OUT/$RUN/cam" --out_cam_irn "$OUT/$RUN/cam_irn" \
      --out_cam_pred "$OUT/$RUN/cam_pred" --out_crf "$OUT/$RUN/crf" --vis_dir "$OUT/$RUN/vis"
  echo "== 4/4 evaluation_cam.py ($RUN network): background sweep 0.20…0.59"
  "$PY" evaluation_cam.py --list "$LISTS/val.txt" --predict_dir "$OUT/$RUN/cam" --gt_dir "$VOC/SegmentationClass" \
      --json "$OUT/$RUN/eval.json" --plot "$OUT/$RUN/eval.png" --logfile "$OUT/$RUN/eval.txt" --comment "$RUN" \
      | tail -n 1
done

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
best = {run: json.loads((out / run / "eval.json").read_text()) for run in ("untrained", "toy")}
print("\n== demo outputs under", out)
for what, where in [("toy VOC set", "VOC2012"), ("trained weights, log, config", "CPN/toy.{pth,log,json}"),
                    ("CAMs (reference .npy)", "toy/cam"), ("CAMs (IRN .npy)", "toy/cam_irn"),
                    ("label PNGs", "toy/cam_pred"), ("CRF pseudo labels", "toy/crf"),
                    ("visualisations", "toy/vis"), ("sweep JSON and plot", "toy/eval.{json,png}")]:
    print(f"  {what:30s} {out / where}")
for run in ("untrained", "toy"):
    print(f"CAM mIoU on the toy val set, {run + ' network:':19s} {best[run]['best_miou']:6.2f} % "
          f"(background score {best[run]['best_threshold']:.2f})")
print("(mIoU over all 21 VOC classes, as the reference computes it; the toy set has 6 of them.)")
EOF
