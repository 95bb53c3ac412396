#!/usr/bin/env bash
# The bundled recipe for one cross-validation fold: the two gland localisers, then the local net
# on the frozen gland alignment (the localisers' best checkpoint on the tuning subjects).
#
#   usage: train_gland_fold.sh DATA OUT FOLD [fit flags for both stages, e.g. --threads 2 or --run-seed 1]
#
# DATA is a data folder (public layout) or a data cache file. Per-stage flags come from
# LOCALISER_ARGS and LOCAL_ARGS (defaults: the bundled model's CPU recipe), the model from
# LOCALISER_CONFIG (default: LabelRegTraining/configs/gland_alignment.json) and LOCAL_CONFIG
# (default: LabelRegTraining/configs/gland_overlap.json, the gland translation by best overlap);
# CONFIG sets both. With LOCALISER=PATH the localiser stage is skipped and the local net starts
# from that checkpoint (another seed of the local stage on the same localisers). LABELREG_TRAIN
# overrides the command (default: labelreg-train).
configs=$(dirname "$0")/../configs
# shellcheck source=fold_args.sh
. "$(dirname "$0")/fold_args.sh"
localiser=${LOCALISER:-$out/localiser/best.pt}
if [ -z "${LOCALISER:-}" ]; then
    config=${LOCALISER_CONFIG:-${CONFIG:-$configs/gland_alignment.json}}
    # shellcheck disable=SC2086 # the *_ARGS are flag lists
    fit --out "$out/localiser" --stage localiser ${LOCALISER_ARGS:---steps 1500 --lr 1e-3 --lr-final 3e-5 --val-every 250} "$@"
fi
config=${LOCAL_CONFIG:-${CONFIG:-$configs/gland_overlap.json}}
# shellcheck disable=SC2086
fit --out "$out/local_only" --stage local_only --init-from "$localiser" \
    ${LOCAL_ARGS:---steps 600 --lr 1e-3 --lr-final 3e-5 --val-every 150} "$@"
