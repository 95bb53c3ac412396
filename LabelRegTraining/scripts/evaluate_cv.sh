#!/usr/bin/env bash
# Evaluate a cross-validation run on every validation fold and print the pooled table.
#
#   usage: evaluate_cv.sh RUNS DATA RESULTS [FOLDS...]
#
# RUNS holds foldN/{global,joint,local_only}/best.pt (train_fold.sh, device_cv.sh); DATA is the
# data folder; per-fold JSON files go to RESULTS. Rows: the centre alignment, the global net
# alone (its stage's best checkpoint, affine mode), the local net alone (local_only) and the
# composite (the joint stage's best checkpoint, deformable mode).
set -euo pipefail
runs=$1 data=$2 results=$3
shift 3
folds=("${@:-0 1 2 3 4}")
train=${LABELREG_TRAIN:-labelreg-train}
mkdir -p "$results"
for fold in ${folds[*]}; do
    ev() { $train evaluate --data "$data" --fold "$fold" --threads "${THREADS:-2}" "$@" > /dev/null; }
    ev --label "centre alignment" --json "$results/initial-fold$fold.json"
    [ -f "$runs/fold$fold/global/best.pt" ] && ev --checkpoint "$runs/fold$fold/global/best.pt" --mode affine \
        --label "global only" --json "$results/global-fold$fold.json"
    [ -f "$runs/fold$fold/local_only/best.pt" ] && ev --checkpoint "$runs/fold$fold/local_only/best.pt" --mode local \
        --label "local only" --json "$results/local_only-fold$fold.json"
    [ -f "$runs/fold$fold/joint/best.pt" ] && ev --checkpoint "$runs/fold$fold/joint/best.pt" --mode deformable \
        --label "composite (global + local, joint fine-tune)" --json "$results/composite-fold$fold.json"
    echo "fold $fold evaluated" >&2
done
$train report "$results"/initial-fold*.json "$results"/global-fold*.json "$results"/local_only-fold*.json \
    "$results"/composite-fold*.json
