#!/usr/bin/env bash
# Rebuild the project's bundled artefacts from ../shared/data/train (T91 + BSD200): the three small experts of
# experts/zoo/ (HAT-S, DAT-S, NAFNetSR-S; configs/experts/train/) and the fusion trained on them
# (checkpoints/fusion_zoo_small/, configs/train/fusion_zoo_small.yaml) — what scripts/quickstart.sh starts from.
#
#   bash scripts/reproduce_zoo.sh            # everything, on 2 CPU cores: the experts side by side, 1 thread each
#                                            # (stage 1 ~2.2 h; HAT-S/DAT-S stage 2 ~1.5 h more; HAT-S stages 3
#                                            # and 4 ~4.5 h more), then ~4 min of caches and ~15 min of fusion
#   STAGE=fusion bash scripts/reproduce_zoo.sh   # only the caches + fusion (experts already exported)
#
# The experts: the stages of configs/experts/zoo_recipe.yaml — each one's configs/experts/train/*.yaml as it stands
# (4000 steps), then fine-tuning stages from the previous stage's EMA weights (DAT-S one, HAT-S three); each model
# card lists its stages.
# Environment: SHARED (default ../shared), STAGE (all | experts | fusion). Runs go to runs/, caches to caches/; a
# finished run is not redone (an interrupted one resumes from its last checkpoint); an expert whose experts/zoo/NAME
# exists is skipped (delete it to retrain). After exporting, the sha256 pins of configs/experts/zoo_small.yaml are
# rewritten to the new weights, and the fusion is retrained on them into checkpoints/fusion_zoo_small/.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${SHARED:-../shared}
STAGE=${STAGE:-all}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup_venv.sh; }
[ -d "$SHARED/data/train/T91" ] || { echo "reproduce_zoo: $SHARED/data/train/T91 not found (set SHARED=...)" >&2; exit 2; }
mkdir -p caches runs
start=$(date +%s)

stage() {  # run_name config [override ...]: train one run to its end (resumed if interrupted; a no-op once finished)
  local run=$1 cfg=$2
  shift 2
  if [ -d "runs/$run/ckpt" ]; then
    "$PY" scripts/train_expert.py --resume "runs/$run" >> "caches/train_expert_$run.log" 2>&1
  else
    "$PY" scripts/train_expert.py "$cfg" train.name="$run" train.ckpt_every=250 train.val_every=500 train.threads=1 \
        "$@" > "caches/train_expert_$run.log" 2>&1
  fi
}

expert() {  # zoo_name: its stages in configs/experts/zoo_recipe.yaml (each fine-tuning the previous one), the export
  local name=$1 stages run args last=""
  if [ -f "experts/zoo/$name/model.safetensors" ]; then
    echo "reproduce_zoo: experts/zoo/$name exists (delete it to retrain)"; return 0
  fi
  stages=$("$PY" -m pipeline.training.expert.recipe configs/experts/zoo_recipe.yaml "$name")  # "run<TAB>config overrides..."
  while IFS=$'\t' read -r run args; do
    # shellcheck disable=SC2086  # config + overrides: words without spaces (checked by pipeline/training/expert/recipe.py)
    stage "$run" $args
    last=$run
  done <<< "$stages"
  "$PY" scripts/train_expert.py --resume "runs/$last" --export "experts/zoo/$name"  # model card: every stage
}

if [ "$STAGE" = all ] || [ "$STAGE" = experts ]; then  # side by side, one thread each; any failure stops the script
  pids=()
  for name in $("$PY" -m pipeline.training.expert.recipe configs/experts/zoo_recipe.yaml); do
    expert "$name" & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  "$PY" - <<'PY'  # pin the exported weights (extraction checks the pins)
import re
from pathlib import Path

import yaml

from pipeline.training.expert.recipe import load_zoo_recipe

path = Path("configs/experts/zoo_small.yaml")
text = path.read_text()
for name in load_zoo_recipe("configs/experts/zoo_recipe.yaml").experts:
    sha = yaml.safe_load(Path(f"experts/zoo/{name}/expert.yaml").read_text())["experts"][0]["sha256"]
    text, n = re.subn(rf"(checkpoint: \.\./\.\./experts/zoo/{name}/model\.safetensors\n\s+sha256: )[0-9a-f]{{64}}", rf"\g<1>{sha}", text)
    assert n == 1, f"no sha256 pin under experts/zoo/{name} in {path}"
path.write_text(text)
print(f"reproduce_zoo: {path} pinned to the exported weights")
PY
fi

if [ "$STAGE" = all ] || [ "$STAGE" = fusion ]; then
  "$PY" scripts/extract_features.py --experts configs/experts/zoo_small.yaml \
      --hr "$SHARED/data/train/T91" "$SHARED/data/train/BSD200" --out caches/zoo_train.h5 \
      --features full --sr-dtype float16
  "$PY" scripts/extract_features.py --experts configs/experts/zoo_small.yaml \
      --hr "$SHARED/data/val/Set5/HR" --lr "$SHARED/data/val/Set5/LR_bicubic/X4" --out caches/zoo_set5.h5 \
      --features full --sr-dtype float16
  if [ -d runs/fusion_zoo_small/ckpt ]; then
    "$PY" train.py --resume runs/fusion_zoo_small
  else
    "$PY" train.py configs/train/fusion_zoo_small.yaml
  fi
  mkdir -p checkpoints/fusion_zoo_small
  best=runs/fusion_zoo_small/ckpt/best
  cp "$best/model.safetensors" "$best/config.json" "$best/SHA256SUMS" checkpoints/fusion_zoo_small/
  echo "reproduce_zoo: checkpoints/fusion_zoo_small/ ← $(readlink -f "$best")"
fi
echo "reproduce_zoo: done in $(( ($(date +%s) - start) / 60 )) min"
