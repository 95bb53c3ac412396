#!/usr/bin/env bash
# The bundled (gland) recipe's cross-validation on one lent GPU (see ../shared/notes/gpu-device.md),
# with seeds: for each of folds 0-4, the two gland localisers, then on those frozen localisers the
# local stage in every VARIANT for every seed in SEEDS, all at once on the one GPU, each evaluated
# on its fold's validation subjects from the data cache. Every stage runs the CPU recipe's steps
# (batch 4) with a wall-clock budget as a safety net, so the job ends on time whatever the GPU.
# What comes back in $OUT: runs.tar.part* with every evaluation JSON, every log and config, and
# fold 0's best checkpoints (float16, see device_pack.py), packed every two minutes and at the end.
#
#   usage: research/scripts/device_gland_cv.sh CACHE.pt.gz [SCALE]    (SCALE multiplies every budget; default 1)
#
# VARIANTS (default "one all all_mirror"): one = the recipe (one label per step), all =
# --label-draw all, all_mirror = --label-draw all with research/configs/gland_local_mirror.json, all_2mm =
# --label-draw all with research/configs/gland_local_2mm.json (the local net on a 2 mm grid), overlap = the
# bundled recipe since stop 17 (one label, LabelRegTraining/configs/gland_overlap.json: the gland translation by best
# overlap), overlap_all = overlap with --label-draw all, overlap_1p5 = overlap with the local net on
# the labels' 1.5 mm grid (research/configs/gland_overlap_1p5mm.json; about 8x the voxels). The localisers
# are evaluated from their centroids (eval.json) and by best overlap (eval_overlap.json).
# SEEDS (default "0 1 2"), FOLDS (default "0 1 2 3 4"); FRACTIONS (default "1"): shares of the
# training subjects the local stage learns from (--train-fraction, learning curves; runs named
# local_VARIANT_fF_sSEED below 1); LOCAL_STEPS (default 600; the time budget grows with it);
# LOCALISER_CONFIG (default LabelRegTraining/configs/gland_alignment.json; e.g. research/configs/gland_alignment_fovcut.json).
# A CPU check, from the repository root:
#   FOLDS=0 SEEDS=0 VARIANTS=all bash research/scripts/device_gland_cv.sh cache.pt.gz 0.02   (VARIANTS=overlap: 2 min)
# shellcheck source=device_env.sh
. "$(dirname "$0")/device_env.sh"
runs=$root/runs/device_gland
mkdir -p "$runs"
device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
recipe=$root/LabelRegTraining/configs configs=$here/../configs  # the product's recipe configs; the research ones
gland=$recipe/gland_alignment.json
mirror=$configs/gland_local_mirror.json
common=(--data "$data" --threads 1 --log-every 25 --checkpoint-minutes 1)
steps=${LOCAL_STEPS:-600}

evaluate() {  # evaluate CHECKPOINT MODE FOLD JSON LABEL [EVALUATE FLAGS]
    $LABELREG_TRAIN evaluate --data "$data" --checkpoint "$1" --mode "$2" --fold "$3" --device "$device" --threads 1 \
        --json "$4" --label "$5" "${@:6}"
}

fold_job() {  # the localisers of one fold, then its local stages in parallel
    local fold=$1 out=$runs/fold$1
    $LABELREG_TRAIN fit "${common[@]}" --fold "$fold" --config "${LOCALISER_CONFIG:-$gland}" --out "$out/localiser" --stage localiser \
        --steps 1500 --lr 1e-3 --lr-final 3e-5 --val-every 250 --minutes "$(minutes 2.5)" || return
    evaluate "$out/localiser/best.pt" affine "$fold" "$out/localiser/eval.json" "gland alignment (localiser stage)" &
    evaluate "$out/localiser/best.pt" affine "$fold" "$out/localiser/eval_overlap.json" \
        "gland alignment by best overlap (localiser stage)" --gland-translation overlap &
    local variant seed flags label
    for variant in ${VARIANTS:-one all all_mirror}; do
        case $variant in
            one) flags=(--config "$gland"); label="one label per step" ;;
            all) flags=(--config "$gland" --label-draw all); label="all labels" ;;
            all_mirror) flags=(--config "$mirror" --label-draw all); label="all labels, mirrored pairs" ;;
            all_2mm) flags=(--config "$configs/gland_local_2mm.json" --label-draw all)
                label="all labels, local net on a 2 mm grid" ;;
            overlap) flags=(--config "$recipe/gland_overlap.json"); label="overlap alignment, one label per step" ;;
            overlap_all) flags=(--config "$recipe/gland_overlap.json" --label-draw all)
                label="overlap alignment, all labels" ;;
            overlap_1p5) flags=(--config "$configs/gland_overlap_1p5mm.json")
                label="overlap alignment, one label per step, local net on a 1.5 mm grid" ;;
            *) echo "unknown variant $variant"; return 1 ;;
        esac
        for fraction in ${FRACTIONS:-1}; do
            local share="" name=local_${variant}
            [ "$fraction" = 1 ] || { share=", $fraction of the training subjects"; name=${name}_f$fraction; }
            for seed in ${SEEDS:-0 1 2}; do
                local run=$out/${name}_s$seed
                ( $LABELREG_TRAIN fit "${common[@]}" --fold "$fold" "${flags[@]}" --out "$run" --stage local_only \
                      --init-from "$out/localiser/best.pt" --run-seed "$seed" --train-fraction "$fraction" \
                      --steps "$steps" --lr 1e-3 --lr-final 3e-5 --val-every $((steps / 4)) \
                      --minutes "$(minutes "3.5 * $steps / 600")" > "$run.log" 2>&1 \
                  && evaluate "$run/best.pt" local "$fold" "$run/eval.json" \
                      "gland alignment + local net, $label$share, run seed $seed" >> "$run.log" 2>&1 ) &
            done
        done
    done
    wait
}

pack() {  # evaluations, logs and configs of every run; fold 0's best checkpoints
    python3 "$here/device_pack.py" pack "$runs/fold0" "$OUT/fold0" > /dev/null
    (cd "$runs" && find . \( -name "*.json" -o -name "*.csv" -o -name "*.log" \) -print0 \
        | tar --null -cf "$OUT/.results.tar" -T - && mv "$OUT/.results.tar" "$OUT/results.tar")
}

pids=()
for fold in ${FOLDS:-0 1 2 3 4}; do
    mkdir -p "$runs/fold$fold"
    fold_job "$fold" > "$runs/fold$fold.log" 2>&1 &
    pids+=($!)
done
while sleep 120; do
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && running=1; done
    [ $running = 1 ] || break
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    for f in "$runs"/fold*/*.log; do echo "$(basename "$(dirname "$f")")/$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -1 | cut -c1-120)"; done
    pack
done
wait
pack
grep -h "on [0-9]* cases" "$runs"/fold*/*.log "$runs"/fold*.log 2> /dev/null
