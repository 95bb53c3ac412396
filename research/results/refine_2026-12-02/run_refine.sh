#!/usr/bin/env bash
# refinement pilot: train refiners for the given folds (resumable), then evaluate
set -uo pipefail
cd /work/main
export PYTHONPATH=/work/main/SlicerLabelReg:/work/main/LabelRegTraining OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cache=/work/cvrun/cache/cache-e5f9d37583dca8d8-p1-99-v2.pt
fold=$1; steps=${STEPS:-500}
out=/work/refine/runs/fold$fold
[ -f $out/refiners.pt ] || nice -n 5 .venv/bin/python research/refine/refine_pilot.py train $cache $fold /work/cvrun/runs/fold$fold/local_only/best.pt $out --steps $steps --threads 1 || exit 1
for mode in local affine; do
  [ -f /work/refine/eval/refined-$mode-fold$fold.json ] || .venv/bin/python research/refine/refine_pilot.py evaluate /work/shared/data/mrus $fold /work/cvrun/runs/fold$fold/local_only/best.pt $out/refiners.pt /work/refine/eval/refined-$mode-fold$fold.json --mode $mode
done
