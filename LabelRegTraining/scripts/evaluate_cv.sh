#!/usr/bin/env bash
# Evaluate a cross-validation run on every validation fold and print the pooled table.
#
#   usage: evaluate_cv.sh RUNS DATA RESULTS [FOLDS...]
#
# RUNS holds foldN/{localiser,local_only}/best.pt (train_gland_fold.sh, the bundled recipe); DATA
# is the data folder or its cache file; per-fold JSON files go to RESULTS. Rows: the centre
# alignment, the gland alignment alone (the localisers, by best overlap as the bundled model
# aligns; affine mode) and the local net on it (local_only, local mode). A fold folder that also
# holds global/ or local/ stages gets their rows too (the global net alone, affine mode; the local
# net on the frozen global net, deformable mode). THREADS (default 2) threads per evaluation; LABELREG_TRAIN
# overrides the command (default: labelreg-train).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: evaluate_cv.sh RUNS DATA RESULTS [FOLDS...] (more in its header)" >&2; exit 2; }
runs=$1 data=$2 results=$3
shift 3
folds=("${@:-0 1 2 3 4}")
train=${LABELREG_TRAIN:-labelreg-train}
mkdir -p "$results"
for fold in ${folds[*]}; do
    ev() { $train evaluate --data "$data" --fold "$fold" --threads "${THREADS:-2}" "$@" > /dev/null; }
    best() { echo "$runs/fold$fold/$1/best.pt"; }
    ev --label "centre alignment" --json "$results/initial-fold$fold.json"
    [ -f "$(best localiser)" ] && ev --checkpoint "$(best localiser)" --mode affine --gland-translation overlap \
        --label "gland alignment by best overlap (localiser stage)" --json "$results/localiser_overlap-fold$fold.json"
    [ -f "$(best local_only)" ] && ev --checkpoint "$(best local_only)" --mode local \
        --label "local only" --json "$results/local_only-fold$fold.json"
    [ -f "$(best global)" ] && ev --checkpoint "$(best global)" --mode affine \
        --label "global only" --json "$results/global-fold$fold.json"
    [ -f "$(best local)" ] && ev --checkpoint "$(best local)" --mode deformable \
        --label "composite (global + local)" --json "$results/composite-fold$fold.json"
    echo "fold $fold evaluated" >&2
done
shopt -s nullglob
$train report "$results"/initial-fold*.json "$results"/localiser_overlap-fold*.json "$results"/local_only-fold*.json \
    "$results"/global-fold*.json "$results"/composite-fold*.json
