#!/usr/bin/env bash
# `make demo`: the real pipeline on the synthetic toy VOC set, end to end:
# toy set → class labels → train_cpn.py → infer_cam.py → evaluation_cam.py, for the trained
# network and for the same network untrained (the baseline the training must beat).
# Usage: tool/demo.sh PYTHON OUT_DIR [TRAIN_STEPS] [DEVICE]
#   DEVICE: auto (CUDA when present, else the CPU), cpu or cuda; TRAIN_STEPS: default of the recipe.
#   DEMO_TOY_TRAIN / DEMO_TOY_VAL (environment): toy set size, for the tests' quick run.
set -euo pipefail
PY=$1
OUT=$2
STEPS=${3:-}
DEVICE=${4:-auto}
cd "$(dirname "$0")/.."
started=$SECONDS

if [ "$DEVICE" = auto ]; then
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
# Demo settings, not the scripts' defaults (those are the paper's). No ImageNet weights can be
# shipped, so training starts from a random ResNet-38 (BN statistics from 16 toy images).
if [ "$DEVICE" = cpu ]; then
  # CPU: the CPN head alone on the frozen random backbone (~4× cheaper a step), with the
  # reference's lr and momentum; the poly schedule ends with the steps.
  STEPS=${STEPS:-600}
  RECIPE=(--freeze_backbone --lr 0.01)
  WHAT="the CPN head alone (--freeze_backbone)"
else
  # GPU: the whole network; a random start needs the usual momentum (not the reference's 5e-4).
  STEPS=${STEPS:-1500}
  RECIPE=(--lr 0.01 --momentum 0.9)
  WHAT="the whole network"
fi
TOY_TRAIN=${DEMO_TOY_TRAIN:-48}
TOY_VAL=${DEMO_TOY_VAL:-16}
BATCH=4
EPOCHS=$(( (STEPS * BATCH + TOY_TRAIN - 1) / TOY_TRAIN ))   # the poly schedule ends near the last step

VOC="$OUT/VOC2012"
LISTS="$OUT/lists"
COMMON=(--voc12_root "$VOC" --cls_labels "$LISTS/cls_labels.npy" --device "$DEVICE")

echo "== 1/4 toy VOC set ($TOY_TRAIN train, $TOY_VAL val images) and class labels"
[ -d "$VOC/JPEGImages" ] || "$PY" -m voc12.toy "$VOC" --num_train "$TOY_TRAIN" --num_val "$TOY_VAL"
"$PY" voc12/make_cls_labels.py --voc12_root "$VOC" --out_dir "$LISTS"

echo "== 2/4 train_cpn.py on $DEVICE: $STEPS steps of $WHAT at crop 64 from a random start"
TRAIN=("${COMMON[@]}" --train_list "$LISTS/train.txt" --weights none --crop_size 64 --resize_long 64 96
       --batch_size "$BATCH" --num_workers 1 --max_epoches "$EPOCHS" "${RECIPE[@]}" --out_dir "$OUT/CPN"
       --log_every 50)
"$PY" train_cpn.py "${TRAIN[@]}" --session_name untrained --max_steps 0
"$PY" train_cpn.py "${TRAIN[@]}" --session_name toy --max_steps "$STEPS" --resume auto

for RUN in untrained toy; do
  echo "== 3/4 infer_cam.py ($RUN network): CAMs, label PNGs, CRF pseudo labels, visualisations"
  # --overwrite: a rerun with other steps trains other weights; the manifests would refuse to mix them.
  "$PY" infer_cam.py "${COMMON[@]}" --weights "$OUT/CPN/$RUN.pth" --infer_list "$LISTS/val.txt" --overwrite \
      --num_workers 1 --out_cam "$OUT/$RUN/cam" --out_cam_irn "$OUT/$RUN/cam_irn" \
      --out_cam_pred "$OUT/$RUN/cam_pred" --out_crf "$OUT/$RUN/crf" --vis_dir "$OUT/$RUN/vis"
  echo "== 4/4 evaluation_cam.py ($RUN network): background sweep 0.20…0.59"
  "$PY" evaluation_cam.py --list "$LISTS/val.txt" --predict_dir "$OUT/$RUN/cam" --gt_dir "$VOC/SegmentationClass" \
      --json "$OUT/$RUN/eval.json" --plot "$OUT/$RUN/eval.png" --logfile "$OUT/$RUN/eval.txt" --comment "$RUN" \
      | tail -n 1
done

"$PY" - "$OUT" "$(( SECONDS - started ))" <<'EOF'
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
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
print(f"trained / untrained: {best['toy']['best_miou'] / best['untrained']['best_miou']:.2f}×; "
      f"demo time {seconds // 60} min {seconds % 60} s")
print("(mIoU over all 21 VOC classes, as the reference computes it; the toy set has 6 of them.)")
EOF
