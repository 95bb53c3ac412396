# Sourced by the device_*cv.sh scripts (a lent GPU machine, see ../shared/notes/gpu-device.md)
# with their arguments CACHE.pt.gz [SCALE]: strict mode; cache, scale, here (this folder), root
# (the repository), OUT (default root/device-out), data (the cache, unpacked), minutes X (X times
# SCALE), LABELREG_TRAIN and the environment of the training processes; CUDA MPS when it works.
set -uo pipefail
cache=$1 scale=${2:-1}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${OUT:-$root/device-out}
export PYTHONPATH=$root/SlicerLabelReg:$root/LabelRegTraining PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export LABELREG_TRAIN="python3 -m labelreg_training.cli"
mkdir -p "$OUT"
data=/tmp/labelreg-data.pt
gunzip -c "$cache" > "$data"
minutes() { python3 -c "print(round($1 * $scale, 3))"; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# MPS lets the small processes' kernels share the GPU; without it they time-slice
if command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; torch.ones(1).cuda().sum().item()"; then
        echo "MPS on"
    else
        echo quit | nvidia-cuda-mps-control 2> /dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        echo "MPS off"
    fi
fi
