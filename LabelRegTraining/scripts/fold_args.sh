# Sourced by the train_*fold.sh scripts: strict mode; without DATA OUT FOLD, the caller's header
# comment as usage; else data, out, fold (shifted off the caller's arguments) and
# fit() = `$LABELREG_TRAIN fit` on that fold (with --config "$config" when the caller sets it).
set -euo pipefail
if [ $# -lt 3 ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
# shellcheck disable=SC2034 # used by the caller
data=$1 out=$2 fold=$3
shift 3
train=${LABELREG_TRAIN:-labelreg-train}
fit() { $train fit --data "$data" --fold "$fold" ${config:+--config "$config"} "$@"; }
