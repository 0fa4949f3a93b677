#!/usr/bin/env bash
# Distributed testing with torchrun (one or more nodes).
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 3 "CONFIG CHECKPOINT GPUS [test.py args...]" "$@"
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
torchrun_tool "$GPUS" test.py "$CONFIG" "$CHECKPOINT" "$@"
