#!/usr/bin/env bash
# refinement pilot on fold 0 (the bundled model): refiners 1500 steps, then paired evaluations
set -uo pipefail
cd /work/main
model=SlicerLabelReg/labelreg/bundled/model/labelreg_mrus.pt
out=/work/refine/fold0
[ -f $out/refiners.pt ] || nice -n 5 .venv/bin/python research/refine/refine_pilot.py train /work/shared/data/mrus 0 $model $out --steps ${STEPS:-1500} --threads 2 || exit 1
for mode in local affine; do
  [ -f /work/refine/eval/bundled-$mode-fold0.json ] || .venv/bin/python research/refine/refine_pilot.py evaluate /work/shared/data/mrus 0 $model none /work/refine/eval/bundled-$mode-fold0.json --mode $mode --label bundled --threads 2
  [ -f /work/refine/eval/refined1500-$mode-fold0.json ] || .venv/bin/python research/refine/refine_pilot.py evaluate /work/shared/data/mrus 0 $model $out/refiners.pt /work/refine/eval/refined1500-$mode-fold0.json --mode $mode --label refined1500 --threads 2
done
.venv/bin/python research/refine/refine_pilot.py segmentation /work/shared/data/mrus 0 $model $out/refiners.pt > /work/refine/eval/segmentation-fold0.txt
echo ALL DONE
