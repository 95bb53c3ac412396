#!/usr/bin/env bash
# The deciding experiment (issue 25), resumable: rerun this script; finished runs are skipped.
# Arms on folds 1-4 (their localisers: /work/cvrun/runs/foldN/localiser/best.pt), run seeds 0 and 1:
#   gm     = local net on the two gland maps only (research/deciding/gland_maps_only.py)
#   recipe = the bundled recipe (seed 0 is /work/cvrun/runs/foldN/local_only; seed 1 here)
# Each run: fit (local_only, 600 steps, one thread) then evaluate -> runs/eval/ARM-foldN-sS.json.
# usage: LANE="1 2" bash run_deciding.sh   (folds for this lane; run two lanes side by side)
set -uo pipefail
cd /work/deciding
export PYTHONPATH=/work/deciding/SlicerLabelReg:/work/deciding/LabelRegTraining OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
py=/work/main/.venv/bin/python
data=/work/shared/data/mrus
mkdir -p runs/eval
run() {  # arm fold seed
    local arm=$1 fold=$2 seed=$3 out=runs/$1/fold$2-s$3
    local entry=(-m labelreg_training.cli)
    [ "$arm" = gm ] && entry=(research/deciding/gland_maps_only.py)
    if [ "$arm" = recipe ] && [ "$seed" = 0 ]; then out=/work/cvrun/runs/fold$fold/local_only; fi
    if [ ! -f "$out/done" ]; then
        local resume=()
        [ -f "$out/checkpoint.pt" ] && resume=(--resume)
        nice -n 10 $py "${entry[@]}" fit --data $data --fold $fold --config LabelRegTraining/configs/gland_overlap.json \
            --out "$out" --stage local_only --init-from /work/cvrun/runs/fold$fold/localiser/best.pt \
            --steps 600 --lr 1e-3 --lr-final 3e-5 --val-every 150 --run-seed $seed --threads 1 "${resume[@]}" \
            >> "runs/$arm-fold$fold-s$seed.log" 2>&1 || return 1
        touch "$out/done"
    fi
    local json=runs/eval/$arm-fold$fold-s$seed.json
    [ -f "$json" ] || nice -n 10 $py "${entry[@]}" evaluate --data $data --fold $fold --checkpoint "$out/best.pt" \
        --mode local --json "$json" --threads 1 --label "$arm seed $seed" >> "runs/$arm-fold$fold-s$seed.log" 2>&1
}
for fold in ${LANE:-1 2 3 4}; do
    for spec in "gm 0" "gm 1" "recipe 1" "recipe 0"; do
        run ${spec% *} $fold ${spec#* } || echo "failed: $spec fold $fold"
    done
done
