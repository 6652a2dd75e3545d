#!/usr/bin/env bash
# `make demo DEMO_COCO=1`'s COCO leg: the toy COCO 2014 set through CPN's stage, as scripts/demo.sh runs
# the toy VOC set: toy set → coco14/make_cls_labels.py → train_cpn.py (81-channel head) → infer_cam.py →
# evaluation_cam.py (81 classes, COCO's sweep 0.05…0.59), for the trained and the untrained network.
# Usage: scripts/demo_coco.sh PYTHON OUT_DIR DEVICE STEPS RECIPE...
set -euo pipefail
PY=$1
OUT=$2
DEVICE=$3
STEPS=$4
shift 4
RECIPE=("$@")
cd "$(dirname "$0")/.."
started=$SECONDS
TOY_TRAIN=${DEMO_TOY_TRAIN:-48}
TOY_VAL=${DEMO_TOY_VAL:-16}
BATCH=4
EPOCHS=$(( (STEPS * BATCH + TOY_TRAIN - 1) / TOY_TRAIN ))
COCO="$OUT/coco"
LISTS="$OUT/lists"
COMMON=(--dataset coco14 --data_root "$COCO" --cls_labels "$LISTS/cls_labels.npy" --device "$DEVICE")

echo "== COCO 1/4 toy COCO 2014 set ($TOY_TRAIN train, $TOY_VAL val images), label PNGs and class labels"
[ -d "$COCO/annotations" ] || "$PY" -m coco14.toy "$COCO" --num_train "$TOY_TRAIN" --num_val "$TOY_VAL"
"$PY" coco14/make_cls_labels.py --coco_root "$COCO" --out_dir "$LISTS" --num_workers 1
echo "== COCO 2/4 train_cpn.py --dataset coco14 on $DEVICE: $STEPS steps"
TRAIN=("${COMMON[@]}" --train_list "$LISTS/train.txt" --weights none --crop_size 64 --resize_long 64 96
       --batch_size "$BATCH" --num_workers 1 --max_epoches "$EPOCHS" "${RECIPE[@]}" --out_dir "$OUT/CPN"
       --log_every 50)
"$PY" train_cpn.py "${TRAIN[@]}" --session_name untrained --max_steps 0
"$PY" train_cpn.py "${TRAIN[@]}" --session_name toy --max_steps "$STEPS" --resume auto
for RUN in untrained toy; do
  echo "== COCO 3/4 infer_cam.py ($RUN network)"
  "$PY" infer_cam.py "${COMMON[@]}" --weights "$OUT/CPN/$RUN.pth" --infer_list "$LISTS/val.txt" --overwrite \
      --num_workers 1 --out_cam "$OUT/$RUN/cam" --vis_dir "$OUT/$RUN/vis"
  echo "== COCO 4/4 evaluation_cam.py --dataset coco14 ($RUN network)"
  "$PY" evaluation_cam.py --dataset coco14 --list "$LISTS/val.txt" --predict_dir "$OUT/$RUN/cam" \
      --gt_dir "$COCO/SegmentationClass" --json "$OUT/$RUN/eval.json" --logfile "$OUT/$RUN/eval.txt" \
      --comment "coco $RUN" | tail -n 1
done

"$PY" - "$OUT" "$(( SECONDS - started ))" <<'PY'
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
for run in ("untrained", "toy"):
    result = json.loads((out / run / "eval.json").read_text())
    # The toy set shows 5 of COCO's 80 classes: also the mean IoU over the classes its ground truth has.
    shown = [entry for entry in result["per_class"] if entry["recall"] is not None]
    shown_miou = sum(entry["iou"] for entry in shown) / len(shown)
    print(f"COCO toy CAM mIoU, {run + ' network:':19s} {result['best_miou']:6.2f} % over all 81 classes, "
          f"{shown_miou:6.2f} % over the {len(shown)} the toy set has "
          f"(background score {result['best_threshold']:.2f})")
print(f"COCO leg time {seconds // 60} min {seconds % 60} s; outputs under {out}")
PY
