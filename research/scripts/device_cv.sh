#!/usr/bin/env bash
# Time-boxed cross-validation on one rented GPU (see ../shared/notes/gpu-device.md): the
# three-stage pipeline on folds 0-4, the local-only ablation on folds 0-4, and two fold-0
# variants (2 mm network grid; stronger augmentation), all at once on the one GPU. Every
# stage has a wall-clock budget, so the whole job ends on time whatever the GPU's speed.
# Results are packed into $OUT (see device_pack.py), also every few minutes while training.
#
#   usage: research/scripts/device_cv.sh CACHE.pt.gz [SCALE]     (SCALE multiplies every budget; default 1)
# shellcheck source=device_env.sh
. "$(dirname "$0")/device_env.sh"
runs=$root/runs/device
mkdir -p "$runs"

common=(--threads 1 --batch-size 16 --steps 1000000 --log-every 25 --checkpoint-minutes 1)
export GLOBAL_ARGS="--minutes $(minutes 1.75) --lr 3e-4 --lr-final 1e-5 --val-every 150"
export LOCAL_ARGS="--minutes $(minutes 3.25) --lr 1e-3 --lr-final 3e-5 --val-every 250"
export JOINT_ARGS="--minutes $(minutes 1.5) --lr 1e-4 --lr-final 1e-5 --val-every 150"
pids=()
for fold in 0 1 2 3 4; do
    bash "$here/train_fold.sh" "$data" "$runs/cv/fold$fold" "$fold" "${common[@]}" > "$runs/fold$fold.log" 2>&1 &
    pids+=($!)
    mkdir -p "$runs/cv/fold$fold/local_only"
    $LABELREG_TRAIN fit --data "$data" --fold "$fold" --stage local_only --out "$runs/cv/fold$fold/local_only" \
        "${common[@]}" --minutes "$(minutes 4)" --lr 1e-3 --lr-final 3e-5 --val-every 250 \
        > "$runs/cv/fold$fold/local_only/stdout.log" 2>&1 &
    pids+=($!)
done
bash "$here/train_fold.sh" "$data" "$runs/grid2mm/fold0" 0 "${common[@]}" --grid-spacing-mm 2.0 \
    > "$runs/grid2mm.log" 2>&1 &
pids+=($!)
bash "$here/train_fold.sh" "$data" "$runs/strong_aug/fold0" 0 "${common[@]}" --config "$here/../configs/strong_augment.json" \
    > "$runs/strong_aug.log" 2>&1 &
pids+=($!)

# pack what is there every two minutes, so a timeout still returns the best models so far
while sleep 120; do
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && running=1; done
    [ $running = 1 ] || break
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    for f in "$runs"/*.log; do echo "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-150)"; done
    python3 "$here/device_pack.py" pack "$runs" "$OUT"
done
wait
python3 "$here/device_pack.py" pack "$runs" "$OUT"
tail -n 3 "$runs"/*.log
