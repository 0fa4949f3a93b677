#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU.
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# Environment: see srun_tool in tools/_launch.sh.
#
# Preemption and requeue: pass --resume on every start; it is always safe. With no checkpoint
# in WORK_DIR yet training starts from scratch; after a preemption it continues from the
# newest checkpoint. The configs' PreemptionSafeCheckpointHook writes checkpoints atomically
# (a job killed while saving leaves the previous one intact) and, should the latest file be
# damaged anyway, resumes from the newest valid one and says so in the log. At most one
# checkpoint interval of training is repeated. In a batch script that Slurm may requeue:
#   #SBATCH --requeue
#   GPUS=16 tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR --resume
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 4 "PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" "$@"
srun_tool "$1" "$2" train.py "$3" --work-dir="$4" "${@:5}"  # CONFIG WORK_DIR ARGS
