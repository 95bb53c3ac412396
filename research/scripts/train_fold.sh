#!/usr/bin/env bash
# The method's three stages for one cross-validation fold: the global net, then the local net on
# globally aligned pairs, then a joint fine-tune of both. Each stage starts from the best
# checkpoint (on the tuning subjects) of the one before.
#
#   usage: research/scripts/train_fold.sh DATA OUT FOLD [fit flags for every stage, e.g. --resume or --threads 1]
#
# DATA is a data folder (public layout) or a data cache file. Per-stage flags come from
# GLOBAL_ARGS, LOCAL_ARGS and JOINT_ARGS; the defaults are the CPU recipe of the first bundled model
# (superseded by the gland recipe, LabelRegTraining/scripts/train_gland_fold.sh).
# LABELREG_TRAIN overrides the command (default: labelreg-train).

# shellcheck source=../../LabelRegTraining/scripts/fold_args.sh
. "$(dirname "$0")/../../LabelRegTraining/scripts/fold_args.sh"
# shellcheck disable=SC2086 # the *_ARGS are flag lists
fit --out "$out/global" --stage global ${GLOBAL_ARGS:---steps 2500 --lr 3e-4 --lr-final 1e-5 --val-every 125} "$@"
# shellcheck disable=SC2086
fit --out "$out/local" --stage local --init-from "$out/global/best.pt" \
    ${LOCAL_ARGS:---steps 5000 --lr 1e-3 --lr-final 3e-5 --val-every 250} "$@"
# shellcheck disable=SC2086
fit --out "$out/joint" --stage joint --init-from "$out/local/best.pt" \
    ${JOINT_ARGS:---steps 2000 --lr 1e-4 --lr-final 1e-5 --val-every 250} "$@"
