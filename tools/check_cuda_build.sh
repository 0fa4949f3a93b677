#!/usr/bin/env bash
# Proves that `FORCE_CUDA=1 bash tools/setup.sh` builds mmcv's CUDA ops here: needs nvcc, not
# a GPU. In a separate environment (never the clone's .venv) it runs the set-up with
# FORCE_CUDA=1, then checks that mmcv imports and reports its CUDA version, that a CPU op
# runs, and that mmcv's and msvmamba_ops' libraries hold a cubin for every architecture of
# TORCH_CUDA_ARCH_LIST (cuobjdump). Slow: mmcv alone takes about 28 min per architecture on
# 2 cores, hence not part of CI. The last line states the outcome.
#
#   bash tools/check_cuda_build.sh
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0: one arch), CHECK_DIR (default
# ${TMPDIR:-/tmp}/msvmamba-cuda-check: holds the environment, the cache and setup.log; a
# second run reuses the cached wheel), MSVMAMBA_VENV / MSVMAMBA_CACHE (default: in
# CHECK_DIR), MAX_JOBS and the rest of tools/setup.sh's settings.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_DIR=${CHECK_DIR:-${TMPDIR:-/tmp}/msvmamba-cuda-check}
export MSVMAMBA_VENV=${MSVMAMBA_VENV:-$CHECK_DIR/venv}
export MSVMAMBA_CACHE=${MSVMAMBA_CACHE:-$CHECK_DIR/cache}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FORCE_CUDA=1
LOG=$CHECK_DIR/setup.log
T0=$(date +%s)

outcome() {
  echo "check_cuda_build: $* [TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=${MAX_JOBS:-$(nproc)}, $(nproc) cores, $(( $(date +%s) - T0 )) s, $(date -u '+%Y-%m-%d %H:%M UTC'), log $LOG]"
}

[ "$MSVMAMBA_VENV" != "$REPO/.venv" ] || { outcome "REFUSED: MSVMAMBA_VENV is the clone's .venv"; exit 2; }
mkdir -p "$CHECK_DIR"
echo "[check_cuda_build] FORCE_CUDA=1 bash tools/setup.sh into $MSVMAMBA_VENV (log: $LOG)"
if ! bash "$REPO/tools/setup.sh" >"$LOG" 2>&1; then
  tail -n 20 "$LOG"
  outcome "FAILED: FORCE_CUDA=1 bash tools/setup.sh exited with an error"
  exit 1
fi
grep -E '^\[setup' "$LOG"

# mmcv: imports, built with CUDA, a CPU op runs; its library and msvmamba_ops' CUDA one
REPORT=$(cd "$REPO" && "$MSVMAMBA_VENV/bin/python" - <<'PYEOF' 2>&1
import glob, os
import torch
import mmcv
from mmcv.ops import get_compiling_cuda_version, nms
from msvmamba_ops import build
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep
print('mmcv', mmcv.__version__, 'cuda', get_compiling_cuda_version(), 'torch', torch.__version__)
print('lib', glob.glob(os.path.join(os.path.dirname(mmcv.__file__), '_ext*.so'))[0])
if build.is_built('cuda', any_arch=True):
    print('lib', build.build_dir('cuda') / (build.EXTENSIONS['cuda'].module + '.so'))
PYEOF
) || { echo "$REPORT"; outcome "FAILED: the built mmcv does not work"; exit 1; }
echo "$REPORT"
grep -q '^mmcv .* cuda [0-9]' <<<"$REPORT" \
  || { outcome "FAILED: mmcv was built without CUDA ops ($(head -1 <<<"$REPORT"))"; exit 1; }

CUOBJDUMP=$(ls "$MSVMAMBA_VENV"/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump \
            "$MSVMAMBA_VENV"/lib/python*/site-packages/nvidia/cu*/bin/cuobjdump 2>/dev/null | head -1)
[ -n "$CUOBJDUMP" ] || { outcome "FAILED: no cuobjdump in $MSVMAMBA_VENV"; exit 1; }
SUMMARY=()
while read -r _ lib; do
  listing=$("$CUOBJDUMP" --list-elf "$lib" 2>&1)
  for arch in ${TORCH_CUDA_ARCH_LIST//;/ }; do
    sm="sm_$(tr -d '.' <<<"${arch%+PTX}")"
    count=$(grep -c "\.$sm\.cubin" <<<"$listing")
    [ "$count" -gt 0 ] || { outcome "FAILED: no $sm cubin in $lib"; exit 1; }
    SUMMARY+=("$(basename "$lib"): $count $sm cubins")
  done
done < <(grep '^lib ' <<<"$REPORT")
outcome "OK: $(head -1 <<<"$REPORT"); $(IFS=';'; echo "${SUMMARY[*]}")"
