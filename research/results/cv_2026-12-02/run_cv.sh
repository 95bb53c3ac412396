#!/usr/bin/env bash
# CV folds 1-4 of the bundled recipe (fold 0 is the bundled model), one after another on one thread.
# Resumable: rerun this script; a finished stage is skipped by its done marker, an unfinished one resumes.
set -uo pipefail
cd /work/cvrun
export PYTHONPATH=/work/cvrun/SlicerLabelReg:/work/cvrun/LabelRegTraining OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train=/work/main/.venv/bin/labelreg-train
data=/work/shared/data/mrus
stage() {  # fold out stage config flags...
    local fold=$1 out=$2 stage=$3 config=$4; shift 4
    [ -f "$out/done" ] && return 0
    if [ -f "$out/checkpoint.pt" ]; then
        nice -n 10 $train fit --data $data --fold $fold --out "$out" --stage $stage --resume "$@" || return 1
    else
        nice -n 10 $train fit --data $data --fold $fold --config "$config" --out "$out" --stage $stage "$@" || return 1
    fi
    touch "$out/done"
}
for fold in ${FOLDS:-1 2 3 4}; do
    r=runs/fold$fold
    mkdir -p runs
    mkdir runs/fold$fold.lock 2>/dev/null || { [ -f runs/fold$fold.lock/$$ ] || continue; }  # another runner has it
    touch runs/fold$fold.lock/$$
    mkdir -p $r
    stage $fold $r/localiser localiser LabelRegTraining/configs/gland_alignment.json \
        --steps 1500 --lr 1e-3 --lr-final 3e-5 --val-every 250 --threads 1 >> $r.log 2>&1 || exit 1
    stage $fold $r/local_only local_only LabelRegTraining/configs/gland_overlap.json \
        --init-from $r/localiser/best.pt --steps 600 --lr 1e-3 --lr-final 3e-5 --val-every 150 --threads 1 >> $r.log 2>&1 || exit 1
done
