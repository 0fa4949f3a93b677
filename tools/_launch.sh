# Sourced by tools/dist_{train,test}.sh and tools/slurm_{train,test}.sh (OpenMMLab-style
# launchers): picks the interpreter, puts this checkout on PYTHONPATH and starts the tool.
#   PYTHON  interpreter. Default: `python` when a virtualenv/conda env is active, else
#           this checkout's .venv/bin/python when it exists, else python3.
TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TOOLS_DIR")
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PYTHON=python
  elif [ -x "$REPO_DIR/.venv/bin/python" ]; then
    PYTHON="$REPO_DIR/.venv/bin/python"
  else
    PYTHON=$(command -v python3 || command -v python)
  fi
fi
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

# need_args COUNT USAGE "$@": exit 2 with USAGE unless at least COUNT arguments
need_args() {
  local count=$1 usage=$2
  shift 2
  if [ $# -lt "$count" ]; then
    echo "usage: $0 $usage" >&2
    exit 2
  fi
}

# need_count NAME VALUE LOWEST WHAT: exit 2 unless VALUE (of variable NAME) is a whole
# number >= LOWEST (0 or 1); WHAT says what the number counts
need_count() {
  local name=$1 value=$2 lowest=$3 what=$4 pattern='^[0-9]+$'
  if [ "$lowest" -ge 1 ]; then pattern='^[1-9][0-9]*$'; fi
  if ! [[ "$value" =~ $pattern ]]; then
    echo "error: $name must be $what, got '$value'" >&2
    exit 2
  fi
}

# torchrun_tool NPROC TOOL ARGS...: NPROC processes of tools/TOOL on this node.
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON,
# MAX_RESTARTS (0): how often torchrun restarts all processes after one fails or is
# killed; a restarted training run resumes from the work dir's latest checkpoint.
torchrun_tool() {
  local nproc=$1 tool=$2 restarts=${MAX_RESTARTS:-0}
  shift 2
  need_count GPUS "$nproc" 1 'a number of processes (1, 2, ...)'
  need_count MAX_RESTARTS "$restarts" 0 'a number of restarts (0, 1, ...)'
  local rendezvous=(--master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}")
  if [ "$restarts" -gt 0 ]; then
    # The processes find each other through a key-value store. torchrun's own store
    # outlives a restart: a restarted process can read the gloo/NCCL address of a killed
    # one from it and fail to connect, or hang (seen with torch 2.14). So with restarts
    # the rendezvous is c10d and each start of the processes gets a store of its own
    # (hosted by rank 0 on a free port). Node ranks are then assigned by the rendezvous.
    rendezvous=(--rdzv-backend=c10d
                --rdzv-endpoint="${MASTER_ADDR:-127.0.0.1}:${PORT:-29500}")
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
  fi
  exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" "${rendezvous[@]}" \
    --max-restarts="$restarts" \
    --nproc_per_node="$nproc" "$TOOLS_DIR/$tool" "$@" --launcher pytorch
}

# srun_tool PARTITION JOB_NAME TOOL ARGS...: tools/TOOL as a Slurm job, one task per GPU.
# Environment: GPUS (8, tasks in all), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS
# (more srun arguments), PYTHON.
srun_tool() {
  local partition=$1 job_name=$2 tool=$3
  shift 3
  # shellcheck disable=SC2086  # SRUN_ARGS is a list of words
  exec srun -p "$partition" --job-name="$job_name" \
    --gres=gpu:"${GPUS_PER_NODE:-8}" --ntasks="${GPUS:-8}" \
    --ntasks-per-node="${GPUS_PER_NODE:-8}" --cpus-per-task="${CPUS_PER_TASK:-5}" \
    --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    "$PYTHON" -u "$TOOLS_DIR/$tool" "$@" --launcher=slurm
}
