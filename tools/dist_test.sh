#!/usr/bin/env bash
# Distributed testing with torchrun (one or more nodes).
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# Environment: see torchrun_tool in tools/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 3 "CONFIG CHECKPOINT GPUS [test.py args...]" "$@"
torchrun_tool "$3" test.py "$1" "$2" "${@:4}"  # GPUS, then CONFIG CHECKPOINT ARGS
