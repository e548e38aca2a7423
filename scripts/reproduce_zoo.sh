#!/usr/bin/env bash
# Rebuild the project's bundled artefacts from ../shared/data/train (T91 + BSD200): the three small experts of
# experts/zoo/ (HAT-S, DAT-S, NAFNetSR-S; configs/experts/train/) and the fusion trained on them
# (checkpoints/fusion_zoo_small/, configs/train/fusion_zoo_small.yaml) — what scripts/quickstart.sh starts from.
#
#   bash scripts/reproduce_zoo.sh            # everything: ~2.2 h for the experts (run side by side, 1 thread each)
#                                            # + ~10 min caches + the fusion, on 2 CPU cores
#   STAGE=fusion bash scripts/reproduce_zoo.sh   # only the caches + fusion (experts already exported)
#
# Environment: SHARED (default ../shared), STEPS (expert steps, default 4000 = what the committed experts used),
# FUSION_STEPS (default 1500), STAGE (all | experts | fusion). Runs go to runs/, caches to caches/; a finished step is
# not redone (an interrupted training resumes from its last checkpoint). The exported files replace experts/zoo/* and
# checkpoints/fusion_zoo_small/: after retraining, copy each expert's sha256 (its expert.yaml) into
# configs/experts/zoo_small.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${SHARED:-../shared}
STEPS=${STEPS:-4000}
FUSION_STEPS=${FUSION_STEPS:-1500}
STAGE=${STAGE:-all}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup_venv.sh; }
[ -d "$SHARED/data/train/T91" ] || { echo "reproduce_zoo: $SHARED/data/train/T91 not found (set SHARED=...)" >&2; exit 2; }
mkdir -p caches runs
start=$(date +%s)

train_expert() {  # config run_name zoo_name
  local cfg=$1 run=runs/$2 zoo=experts/zoo/$3
  if [ -f "$zoo/model.safetensors" ]; then
    echo "reproduce_zoo: $zoo exists (delete it to retrain)"; return 0
  fi
  local common=(train.steps="$STEPS" train.ckpt_every=250 train.val_every=500 train.threads=1)
  if [ -d "$run/ckpt" ]; then
    "$PY" scripts/train_expert.py --resume "$run" > "caches/train_expert_$2.log" 2>&1
  else
    "$PY" scripts/train_expert.py "$cfg" "${common[@]}" > "caches/train_expert_$2.log" 2>&1
  fi
  "$PY" scripts/train_expert.py --resume "$run" --export "$zoo"
}

if [ "$STAGE" = all ] || [ "$STAGE" = experts ]; then
  echo "reproduce_zoo: training HAT-S, DAT-S and NAFNetSR-S side by side (logs: caches/train_expert_*.log)"
  train_expert configs/experts/train/hat_s.yaml hat_s hat_s &
  p1=$!
  train_expert configs/experts/train/dat_s.yaml dat_s dat_s &
  p2=$!
  train_expert configs/experts/train/nafnet_sr.yaml nafnet_sr_s nafnet_sr_s &
  p3=$!
  wait $p1 && wait $p2 && wait $p3
fi

if [ "$STAGE" = all ] || [ "$STAGE" = fusion ]; then
  "$PY" scripts/extract_features.py --experts configs/experts/zoo_small.yaml \
      --hr "$SHARED/data/train/T91" "$SHARED/data/train/BSD200" --out caches/zoo_train.h5
  "$PY" scripts/extract_features.py --experts configs/experts/zoo_small.yaml \
      --hr "$SHARED/data/val/Set5/HR" --lr "$SHARED/data/val/Set5/LR_bicubic/X4" --out caches/zoo_set5.h5
  if [ -d runs/fusion_zoo_small/ckpt ]; then
    "$PY" train.py --resume runs/fusion_zoo_small
  else
    "$PY" train.py configs/train/fusion_zoo_small.yaml train.steps="$FUSION_STEPS"
  fi
  mkdir -p checkpoints/fusion_zoo_small
  best=runs/fusion_zoo_small/ckpt/best
  cp "$best/model.safetensors" "$best/config.json" "$best/SHA256SUMS" checkpoints/fusion_zoo_small/
  echo "reproduce_zoo: checkpoints/fusion_zoo_small/ ← $(readlink -f "$best")"
fi
echo "reproduce_zoo: done in $(( ($(date +%s) - start) / 60 )) min"
