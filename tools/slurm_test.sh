#!/usr/bin/env bash
# Testing on a Slurm cluster, one task per GPU.
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# Environment: see srun_tool in tools/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 4 "PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" "$@"
srun_tool "$1" "$2" test.py "${@:3}"  # CONFIG CHECKPOINT ARGS
