#!/usr/bin/env bash
# Cross-validation folds on a small CPU machine: one single-threaded process per fold, all at
# once, each stage time-boxed (the recipe of research/results/cv, folds 1-4, on 2 cores).
#
#   usage: research/scripts/cpu_cv.sh DATA RUNS [FOLDS...]        (default folds: 1 2 3 4)
#
# DATA is the data folder or its cache file; RUNS/foldN/{global,local,joint} and RUNS/foldN.log
# are written. Stages end at their step count or time box (GLOBAL_MIN, LOCAL_MIN, JOINT_MIN
# minutes; default 20, 55, 20), whichever comes first. After an interruption, continue a fold
# with the same *_ARGS and: train_fold.sh DATA RUNS/foldN N --threads 1 --resume
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
data=$1 runs=$2
shift 2
folds=("${@:-1 2 3 4}")
here=$(dirname "$0")
mkdir -p "$runs"
for fold in ${folds[*]}; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    GLOBAL_ARGS="--steps 2500 --minutes ${GLOBAL_MIN:-20} --lr 3e-4 --lr-final 1e-5 --val-every 125 --log-every 25" \
    LOCAL_ARGS="--steps 5000 --minutes ${LOCAL_MIN:-55} --lr 1e-3 --lr-final 3e-5 --val-every 250 --log-every 50" \
    JOINT_ARGS="--steps 2000 --minutes ${JOINT_MIN:-20} --lr 1e-4 --lr-final 1e-5 --val-every 250 --log-every 50" \
    bash "$here/train_fold.sh" "$data" "$runs/fold$fold" "$fold" --threads 1 > "$runs/fold$fold.log" 2>&1 &
done
wait
