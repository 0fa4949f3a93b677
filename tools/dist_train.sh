#!/usr/bin/env bash
# Distributed training with torchrun (one or more nodes).
#   tools/dist_train.sh CONFIG GPUS [train.py args...]
# GPUS: processes on this node; without GPUs they train on the CPU (gloo).
# Environment: see torchrun_tool in tools/_launch.sh. MAX_RESTARTS=N: when a process
# fails or is killed, torchrun restarts all of them, up to N times, and the run resumes
# from the newest valid checkpoint of the work dir (projects/msvmamba_mm/cli.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 2 "CONFIG GPUS [train.py args...]" "$@"
torchrun_tool "$2" train.py "$1" "${@:3}"  # GPUS, then CONFIG ARGS
