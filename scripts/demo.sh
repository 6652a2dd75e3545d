#!/usr/bin/env bash
# `make demo`: the real pipeline on the synthetic toy VOC set, end to end:
# toy set → class labels → train_cpn.py → infer_cam.py → evaluation_cam.py, for the trained
# network and for the same network untrained (the baseline the training must beat); then IRN's stage
# for the trained network: train CAMs → cam_to_ir_label.py → train_irn.py → make_sem_seg_labels.py
# on val → evaluation_cam.py --type png, the pseudo labels' mIoU next to the CAMs'.
# Usage: scripts/demo.sh PYTHON OUT_DIR [TRAIN_STEPS] [DEVICE]
#   DEVICE: auto (CUDA when present, else the CPU), cpu or cuda; TRAIN_STEPS: default of the recipe.
#   DEMO_TOY_TRAIN / DEMO_TOY_VAL (environment): toy set size, for the tests' quick run.
#   DEMO_IRN_STEPS (environment): train_irn.py's steps (default 150 on the CPU, 600 on a GPU).
#   DEMO_COCO=1 (environment): afterwards, the toy COCO 2014 set through CPN's stage (scripts/demo_coco.sh).
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
  IRN_STEPS=${DEMO_IRN_STEPS:-150}
else
  # GPU: the whole network; a random start needs the usual momentum (not the reference's 5e-4).
  STEPS=${STEPS:-1500}
  RECIPE=(--lr 0.01 --momentum 0.9)
  WHAT="the whole network"
  IRN_STEPS=${DEMO_IRN_STEPS:-600}
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

cpn_seconds=$(( SECONDS - started ))

# IRN's stage (IRN's second step), for the trained network. IRNet trains on the training list, so it
# needs that list's CAMs; the val CAMs of step 3 give the val pseudo labels. IRN's ResNet-50 starts
# random too (--weights none: no ImageNet weights can be shipped), so its boundaries are weak.
IRN_CROP=96                                      # ≥ 76 and a multiple of 4
IRN_BATCH=$(( TOY_TRAIN < 8 ? TOY_TRAIN : 8 ))
IRN_EPOCHS=$(( (IRN_STEPS * IRN_BATCH + TOY_TRAIN - 1) / TOY_TRAIN ))  # the poly schedule ends near the last step
stage=$SECONDS
echo "== IRN 1/4 infer_cam.py (toy network) on the training list: IRN-format CAMs for IRNet's labels"
"$PY" infer_cam.py "${COMMON[@]}" --weights "$OUT/CPN/toy.pth" --infer_list "$LISTS/train.txt" --overwrite \
    --num_workers 1 --out_cam_irn "$OUT/toy/cam_irn_train"
echo "   $(( SECONDS - stage )) s"; stage=$SECONDS
echo "== IRN 2/4 cam_to_ir_label.py: confident labels (training list)"
"$PY" cam_to_ir_label.py "${COMMON[@]}" --train_list "$LISTS/train.txt" --cam_out_dir "$OUT/toy/cam_irn_train" \
    --ir_label_out_dir "$OUT/toy/ir_label" --num_workers 2 --overwrite
echo "   $(( SECONDS - stage )) s"; stage=$SECONDS
echo "== IRN 3/4 train_irn.py on $DEVICE: $IRN_STEPS steps of IRNet's heads at crop $IRN_CROP, batch $IRN_BATCH, random ResNet-50"
# --resume auto: a rerun of the same run resumes its last checkpoint and stops at once. A checkpoint of
# another run (other steps, or labels from other CPN weights) must not be resumed: start afresh then.
IRN_RUN="$IRN_STEPS steps, batch $IRN_BATCH, $TOY_TRAIN images, CPN $(sha256sum "$OUT/CPN/toy.pth" | cut -c1-16)"
if [ -f "$OUT/IRN/demo_run.txt" ] && [ "$(cat "$OUT/IRN/demo_run.txt")" != "$IRN_RUN" ]; then
  rm -rf "$OUT/IRN"
fi
mkdir -p "$OUT/IRN"
echo "$IRN_RUN" > "$OUT/IRN/demo_run.txt"
"$PY" train_irn.py --voc12_root "$VOC" --train_list "$LISTS/train.txt" --infer_list "$LISTS/train.txt" \
    --ir_label_out_dir "$OUT/toy/ir_label" --weights none --irn_weights_name "$OUT/IRN/res50_irn.pth" \
    --irn_crop_size "$IRN_CROP" --irn_batch_size "$IRN_BATCH" --irn_num_epoches "$IRN_EPOCHS" \
    --max_steps "$IRN_STEPS" --num_workers 1 --device "$DEVICE" --out_dir "$OUT/IRN" --resume auto --log_every 50
echo "   $(( SECONDS - stage )) s"; stage=$SECONDS
echo "== IRN 4/4 make_sem_seg_labels.py (val, random walk) and evaluation_cam.py --type png"
"$PY" make_sem_seg_labels.py "${COMMON[@]}" --infer_list "$LISTS/val.txt" --cam_out_dir "$OUT/toy/cam_irn" \
    --irn_weights_name "$OUT/IRN/res50_irn.pth" --sem_seg_out_dir "$OUT/toy/sem_seg" --num_workers 1 --overwrite
"$PY" evaluation_cam.py --list "$LISTS/val.txt" --predict_dir "$OUT/toy/sem_seg" --gt_dir "$VOC/SegmentationClass" \
    --type png --prediction_void background --json "$OUT/toy/sem_seg_eval.json" \
    --logfile "$OUT/toy/sem_seg_eval.txt" --comment "toy IRN" | tail -n 1
echo "   $(( SECONDS - stage )) s"

"$PY" - "$OUT" "$(( SECONDS - started ))" "$cpn_seconds" <<'EOF'
import json, sys
from pathlib import Path
out, seconds, cpn_seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
best = {run: json.loads((out / run / "eval.json").read_text()) for run in ("untrained", "toy")}
pseudo = json.loads((out / "toy" / "sem_seg_eval.json").read_text())["best_miou"]
print("\n== demo outputs under", out)
for what, where in [("toy VOC set", "VOC2012"), ("trained weights, log, config", "CPN/toy.{pth,log,json}"),
                    ("CAMs (reference .npy)", "toy/cam"), ("CAMs (IRN .npy)", "toy/cam_irn"),
                    ("label PNGs", "toy/cam_pred"), ("CRF pseudo labels", "toy/crf"),
                    ("visualisations", "toy/vis"), ("sweep JSON and plot", "toy/eval.{json,png}"),
                    ("train CAMs (IRN .npy)", "toy/cam_irn_train"), ("IRN confident labels", "toy/ir_label"),
                    ("IRNet weights, log", "IRN/res50_irn.{pth,log}"), ("IRN pseudo labels (val)", "toy/sem_seg"),
                    ("pseudo-label eval JSON", "toy/sem_seg_eval.json")]:
    print(f"  {what:30s} {out / where}")
for run in ("untrained", "toy"):
    print(f"CAM mIoU on the toy val set, {run + ' network:':19s} {best[run]['best_miou']:6.2f} % "
          f"(background score {best[run]['best_threshold']:.2f})")
print(f"trained / untrained: {best['toy']['best_miou'] / best['untrained']['best_miou']:.2f}×; "
      f"demo time {seconds // 60} min {seconds % 60} s")
print(f"pseudo-label mIoU (IRN random walk), toy network:  {pseudo:6.2f} % "
      f"(background score 0.25, IRN's default; CAMs at their best sweep score: {best['toy']['best_miou']:.2f} %)")
ratio = pseudo / best["toy"]["best_miou"] if best["toy"]["best_miou"] > 0 else float("nan")
verdict = ("the pseudo labels beat the CAMs" if pseudo > best["toy"]["best_miou"] else
           "the pseudo labels do NOT beat the CAMs here: IRNet's ResNet-50 starts random (no ImageNet "
           "weights can be shipped) and trains a few steps, so its class boundaries are weak")
print(f"pseudo labels / CAMs: {ratio:.2f}×; {verdict}")
print(f"time: CPN part {cpn_seconds // 60} min {cpn_seconds % 60} s, IRN part "
      f"{(seconds - cpn_seconds) // 60} min {(seconds - cpn_seconds) % 60} s")
print("(mIoU over all 21 VOC classes, as the reference computes it; the toy set has 6 of them.)")
EOF

if [ "${DEMO_COCO:-0}" = 1 ]; then
  bash scripts/demo_coco.sh "$PY" "$OUT/coco14" "$DEVICE" "$STEPS" "${RECIPE[@]}"
fi
