#!/usr/bin/env bash
# Re-evaluate the committed fusion of the three real experts (checkpoints/fusion_craft_ditn_span/) on Set5, Set14
# and BSD100 through the user-facing path — run_experts.py / submit.py / evaluate.py — and print docs/RESULTS.md's table.
#
#   bash scripts/research/reproduce_results.sh                      # everything (needs ../shared)
#   SETS="Set5" TTA=0 bash scripts/research/reproduce_results.sh    # quicker subset
#
# Environment: SHARED (default ../shared), CKPT (default checkpoints/fusion_craft_ditn_span; a run folder → its best
# checkpoint), OUT (default
# results/fusion_craft_ditn_span), SETS (default "Set5 Set14 BSD100"), TTA (1: also the x8 self-ensemble; default 1),
# DEVICE (default cpu). Set5/Set14 use the official LR_bicubic/X4 images; BSD100 ships HR only, so its LR is made
# with the MATLAB-compatible bicubic (scripts/make_lr.py). Finished steps are not redone (delete OUT to start over),
# except the fusion's images when they were made by another checkpoint: each fusion folder has a
# <folder>.checkpoint.sha256 stamp (the sha256 of the model.safetensors that made it), and a folder without a stamp
# or with another one is deleted and made again — scores of a stale checkpoint must never reach the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

SHARED=${SHARED:-../shared}
CKPT=${CKPT:-checkpoints/fusion_craft_ditn_span}
OUT=${OUT:-results/fusion_craft_ditn_span}
SETS=${SETS:-Set5 Set14 BSD100}
TTA=${TTA:-1}
DEVICE=${DEVICE:-cpu}
EXPERTS=configs/experts/shared_real.yaml
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup_venv.sh; }

[ -d "$SHARED/data/val" ] || { echo "reproduce_results: $SHARED/data/val not found (set SHARED=...)" >&2; exit 2; }
# the checkpoint folder submit.py will load (a run folder → its best checkpoint), resolved by the same function
ckpt_dir=$("$PY" -c 'import sys
from pipeline.training.checkpoint import resolve_checkpoint
try:
    print(resolve_checkpoint(sys.argv[1], which="best"))
except FileNotFoundError as exc:
    sys.exit(f"reproduce_results: {exc}")' "$CKPT") || exit 2
ckpt_sha=$(sha256sum "$ckpt_dir/model.safetensors" | cut -d' ' -f1)
echo "reproduce_results: checkpoint $ckpt_dir (model.safetensors sha256 ${ckpt_sha:0:16}…)"

# made_by_ckpt DIR: DIR is a finished set of fusion images made by this checkpoint
made_by_ckpt() { [ -f "$1/readme.txt" ] && [ "$(cat "$1.checkpoint.sha256" 2>/dev/null)" = "$ckpt_sha" ]; }

# fusion_images DIR [--self-ensemble pipeline-x8]: the fusion's SR images of this set, made by this checkpoint
fusion_images() {
  local dir=$1; shift
  if made_by_ckpt "$dir"; then return 0; fi
  if [ -e "$dir" ]; then echo "reproduce_results: $dir was made by another checkpoint (or is unfinished): redoing it"; fi
  rm -rf "$dir" "$dir.checkpoint.sha256"
  "$PY" scripts/submit.py --run "$CKPT" --experts "$EXPERTS" --input "$lr" --output "$dir" --device "$DEVICE" "$@"
  echo "$ckpt_sha" > "$dir.checkpoint.sha256"
}

start=$(date +%s)
for set in $SETS; do
  src="$SHARED/data/val/$set"
  work="$OUT/$set"
  mkdir -p "$work/scores"
  if [ -d "$src/HR" ]; then hr="$src/HR"; else hr="$src"; fi
  if [ -d "$src/LR_bicubic/X4" ]; then
    lr="$src/LR_bicubic/X4"
  else
    lr="$work/LR"
    [ -d "$lr" ] || "$PY" scripts/make_lr.py --hr "$hr" --out "$lr" --scale 4
  fi
  echo "== $set: HR $hr, LR $lr"
  [ -f "$work/experts/fingerprints.json" ] || \
    "$PY" scripts/run_experts.py --config "$EXPERTS" --input "$lr" --output "$work/experts"
  [ -d "$work/experts/_oracle_b8" ] || \
    "$PY" scripts/research/expert_baselines.py --experts-dir "$work/experts" --hr "$hr" --blocks 8 16 --blend
  fusion_images "$work/fusion"
  if [ "$TTA" = 1 ]; then fusion_images "$work/fusion_tta" --self-ensemble pipeline-x8; fi
  for m in craft ditn span _mean _blend _oracle_b16 _oracle_b8 _oracle; do
    "$PY" scripts/evaluate.py --sr "$work/experts/$m" --hr "$hr" --json "$work/scores/${m#_}.json" > /dev/null
  done
  for m in fusion fusion_tta; do
    if made_by_ckpt "$work/$m"; then
      "$PY" scripts/evaluate.py --sr "$work/$m" --hr "$hr" --json "$work/scores/$m.json" > /dev/null
    else
      rm -f "$work/scores/$m.json"  # no score of another checkpoint's images
    fi
  done
done
"$PY" scripts/research/results_table.py "$OUT" --sets $SETS
echo "reproduce_results: $(( $(date +%s) - start )) s; per-image scores in $OUT/<set>/scores/*.json"
