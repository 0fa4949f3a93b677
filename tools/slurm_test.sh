#!/usr/bin/env bash
# Testing on a Slurm cluster, one task per GPU.
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# Environment: GPUS (8, tasks in all), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
#   SRUN_ARGS (more srun arguments), PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 4 "PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" "$@"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
srun_tool "$PARTITION" "$JOB_NAME" test.py "$CONFIG" "$CHECKPOINT" "$@"
