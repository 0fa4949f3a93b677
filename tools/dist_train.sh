#!/usr/bin/env bash
# Distributed training with torchrun (one or more nodes).
#   tools/dist_train.sh CONFIG GPUS [train.py args...]
# GPUS: processes on this node; without GPUs they train on the CPU (gloo).
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 2 "CONFIG GPUS [train.py args...]" "$@"
CONFIG=$1
GPUS=$2
shift 2
torchrun_tool "$GPUS" train.py "$CONFIG" "$@"
