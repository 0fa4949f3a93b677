#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU.
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# Environment: see srun_tool in tools/_launch.sh, and SIGNAL_BEFORE_LIMIT (300): seconds
# before the job's time limit at which Slurm sends SIGUSR1 (srun --signal; 0: none).
#
# Preemption, time limit, requeue (docs/tools.md, "Long runs on a cluster"): on SIGTERM
# (preemption, scancel) or SIGUSR1 the configs' PreemptionHook lets the running iteration
# finish, saves its checkpoint atomically and exits with status 75. Pass --resume on every
# start: it is always safe (no checkpoint yet: training starts from scratch) and continues
# at the iteration after the newest valid checkpoint. In a batch script:
#   #SBATCH --requeue       # a preempted job goes back to the queue
#   GPUS=16 tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR --resume || rc=$?
#   # 75: stopped with a checkpoint (time limit near): queue the job again
#   if [ "${rc:-0}" -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
need_args 4 "PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" "$@"
lead=${SIGNAL_BEFORE_LIMIT:-300}
need_count SIGNAL_BEFORE_LIMIT "$lead" 0 'a number of seconds (0: no signal)'
if [ "$lead" -gt 0 ]; then
  # the lead time must cover an iteration, a validation and a checkpoint write; Slurm
  # may send the signal up to a minute early
  SRUN_ARGS="--signal=USR1@$lead ${SRUN_ARGS:-}"
fi
srun_tool "$1" "$2" train.py "$3" --work-dir="$4" "${@:5}"  # CONFIG WORK_DIR ARGS
