#!/usr/bin/env bash
# One-command set-up of MSVMamba-MM: venv, pinned torch, mmcv 2.1.0 built with its
# compiled ops against that torch, the OpenMMLab stack, this project (editable) and the
# compiled parts of msvmamba_ops. Idempotent: a second run with nothing changed only checks.
#
# Environment:
#   MSVMAMBA_VENV   environment to use/create (default: <repo>/.venv). Point it at an
#                   existing env that already has a CUDA torch to keep that torch.
#   MSVMAMBA_CACHE  cache outside the clone for built wheels/extensions
#                   (default: ${XDG_CACHE_HOME:-~/.cache}/msvmamba-mm)
#   PYTHON          interpreter used to create the venv (default: python3.11, else python3)
#   MSVMAMBA_TORCH  torch version to install instead of the pinned one (requirements/torch.txt),
#                   e.g. 2.10.0: PyPI's default wheels of 2.8-2.10 are built for CUDA 12.8, for
#                   NVIDIA drivers older than the 580 series that CUDA 13 needs (README).
#                   Oldest supported: 2.8. An installed torch of another version is replaced.
#   FORCE_CUDA=1    build mmcv's CUDA ops (needs nvcc of torch's CUDA major version). The
#                   toolkit and the headers are found by `python -m msvmamba_ops.build
#                   --print-cuda-env` (CUDA_HOME, CPATH), for mmcv and msvmamba_ops alike.
#   TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA builds (default with FORCE_CUDA=1: the
#                   visible GPU's, with PTX, else 8.0;8.6;8.9;9.0;10.0;12.0+PTX). mmcv takes
#                   about 28 min per architecture on 2 cores.
#   MAX_JOBS        parallel compile jobs (default: number of cores)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MSVMAMBA_VENV:-$REPO/.venv}
CACHE=${MSVMAMBA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msvmamba-mm}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
MMCV_VERSION=2.1.0
# torch.export of the scan with a dynamic length (2.7.1 fails it); torch.compiler.is_exporting
# needs 2.7, torch.library.custom_op 2.4
OLDEST_TORCH=2.8
T0=$(date +%s)

SRC=""
trap '[ -z "$SRC" ] || rm -rf "$SRC"' EXIT  # the mmcv source, also when stopped midway
trap 'exit 130' INT
trap 'exit 143' TERM
say() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. the virtual environment -------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
  [ -n "$PY" ] || die "no python3 found; install Python 3.11 or set PYTHON=/path/to/python"
  say "creating virtual environment $VENV with $PY"
  "$PY" -m venv "$VENV"
else
  say "using environment $VENV"
fi
PYBIN="$VENV/bin/python"
PIP="$PYBIN -m pip"
mkdir -p "$CACHE"

# A stamp of everything that decides the pip installs: nothing changed -> skip pip.
stamp_of() { cat "$REPO"/requirements.txt "$REPO"/requirements/*.txt "$REPO"/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16; }
STAMP_FILE="$VENV/.msvmamba-setup-stamp"
REQ_STAMP=$(stamp_of)

# --- 2. build tools and torch ---------------------------------------------------------
if [ "$(cat "$STAMP_FILE" 2>/dev/null)" != "$REQ_STAMP" ]; then
  say "installing build tools (requirements/build.txt)"
  $PIP install -q -r "$REPO/requirements/build.txt"
fi
# One interpreter start answers every "already installed?" question (torch imports are slow).
probe() { $PYBIN - <<PYEOF 2>/dev/null || true
try:
    import torch, torchvision
    print("torch", torch.__version__.replace("+", "_"), torch.__version__, torch.version.cuda)
except Exception:
    pass
try:
    import mmcv, mmcv.ops
    print("mmcv", mmcv.__version__)
    print("mmcv_cuda", mmcv.ops.get_compiling_cuda_version())
except Exception:
    pass
PYEOF
}
PROBE=$(probe)
INSTALLED_TORCH=$(awk '/^torch /{print $3}' <<<"$PROBE")
if [ -n "${MSVMAMBA_TORCH:-}" ]; then
  [[ "$MSVMAMBA_TORCH" =~ ^2\.([0-9]+)(\.[0-9]+)?$ ]] \
    || die "MSVMAMBA_TORCH=$MSVMAMBA_TORCH: expected a torch 2.x version such as 2.10.0"
  (( BASH_REMATCH[1] >= ${OLDEST_TORCH#2.} )) \
    || die "MSVMAMBA_TORCH=$MSVMAMBA_TORCH is older than torch $OLDEST_TORCH, the oldest this code runs on"
fi
if [ -n "${MSVMAMBA_TORCH:-}" ] && [ "${INSTALLED_TORCH%%+*}" != "$MSVMAMBA_TORCH" ]; then
  # torchvision 0.(N+15) goes with torch 2.N; pip picks the release built for this torch
  TV_MINOR=$(( $(cut -d. -f2 <<<"$MSVMAMBA_TORCH") + 15 ))
  say "installing torch==$MSVMAMBA_TORCH and torchvision 0.$TV_MINOR (MSVMAMBA_TORCH; a download of several GB)"
  $PIP install -q "torch==$MSVMAMBA_TORCH" "torchvision==0.$TV_MINOR.*"
  PROBE=$(probe)
elif [ -n "$INSTALLED_TORCH" ]; then
  say "torch already installed: $(awk '/^torch /{print $3, "cuda", $4}' <<<"$PROBE") (kept)"
else
  say "installing torch/torchvision (requirements/torch.txt; ~1 min, 5.5 GB)"
  $PIP install -q -r "$REPO/requirements/torch.txt"
  PROBE=$(probe)
fi
TORCH_TAG=$(awk '/^torch /{print $2}' <<<"$PROBE")
[ -n "$TORCH_TAG" ] || die "torch does not import in $VENV after installing it"
TORCH_VERSION=$(awk '/^torch /{print $3}' <<<"$PROBE")
[ "$(printf '%s\n' "$OLDEST_TORCH" "${TORCH_VERSION%%+*}" | sort -V | head -1)" = "$OLDEST_TORCH" ] \
  || die "torch $TORCH_VERSION in $VENV is older than $OLDEST_TORCH, the oldest this code runs on; set MSVMAMBA_TORCH=2.10.0 (CUDA 12.8) or newer"

# --- CUDA build environment (FORCE_CUDA=1): toolkit, headers, architectures ------------
if [ "${FORCE_CUDA:-0}" = "1" ]; then
  # the same code finds them for msvmamba_ops' own CUDA build (msvmamba_ops/build.py)
  CUDA_ENV=$(PYTHONPATH="$REPO" $PYBIN -m msvmamba_ops.build --print-cuda-env) \
    || die "FORCE_CUDA=1 asks for CUDA builds, which are not possible here (message above)"
  eval "$CUDA_ENV"
  N_ARCHS=$(tr ';' '\n' <<<"$TORCH_CUDA_ARCH_LIST" | grep -c .)
  say "CUDA build: CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST ($N_ARCHS arch(s))"
fi

# --- 3. mmcv with compiled ops, built against this torch ------------------------------
# The wheel cache is keyed by torch version and, for CUDA ops, by the arch list.
if [ "${FORCE_CUDA:-0}" = "1" ]; then
  OPS=cuda-$(tr -c '0-9A-Za-z.\n' '_' <<<"$TORCH_CUDA_ARCH_LIST")
  BUILD_TIME="about $(( 28 * N_ARCHS )) min on 2 idle cores: ~28 min per arch, less with more cores"
else
  OPS=cpu
  BUILD_TIME="~10 min on 2 idle cores"
fi
MMCV_KEY="$MMCV_VERSION-torch$TORCH_TAG-$OPS"
MMCV_STAMP="$VENV/.msvmamba-mmcv"   # which cached wheel is installed in this venv
MMCV_HAS_CUDA=$(awk '/^mmcv_cuda /{print ($2 != "not" ? "yes" : "no")}' <<<"$PROBE")
# Kept: a working mmcv when CUDA ops are not asked for; with FORCE_CUDA=1, the wheel of this
# torch and arch list (or, installed by other means, any mmcv with CUDA ops).
if grep -qx "mmcv $MMCV_VERSION" <<<"$PROBE" \
    && { [ "$OPS" = cpu ] || [ "$(cat "$MMCV_STAMP" 2>/dev/null)" = "$MMCV_KEY" ] \
         || { [ ! -f "$MMCV_STAMP" ] && [ "$MMCV_HAS_CUDA" = yes ]; }; }; then
  say "mmcv $MMCV_VERSION with $( [ "$MMCV_HAS_CUDA" = yes ] && echo CUDA || echo CPU ) ops already installed"
else
  WHEEL_DIR="$CACHE/mmcv/$MMCV_KEY"
  WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    say "building mmcv $MMCV_VERSION with $OPS ops against torch $TORCH_TAG (slow: $BUILD_TIME)"
    SRC=$(mktemp -d)
    $PIP download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$SRC"
    tar -xzf "$SRC"/mmcv-$MMCV_VERSION.tar.gz -C "$SRC"
    # torch >= 2.14 headers need C++20; mmcv 2.1.0 hard-codes c++14/17 (a later -std wins,
    # so CXXFLAGS cannot override it): patch its setup.py.
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
    B0=$(date +%s)
    mkdir -p "$WHEEL_DIR.tmp"
    MMCV_WITH_OPS=1 $PIP wheel -q --no-deps --no-build-isolation -w "$WHEEL_DIR.tmp" "$SRC/mmcv-$MMCV_VERSION"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"   # atomic: no half-built cache
    rm -rf "$SRC" && SRC=""
    say "mmcv built in $(( $(date +%s) - B0 )) s, cached in $WHEEL_DIR"
    WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl | head -1)
  else
    say "using cached mmcv wheel $WHEEL"
  fi
  $PIP install -q --no-deps --force-reinstall "$WHEEL"
  echo "$MMCV_KEY" > "$MMCV_STAMP"
fi

# --- 4. the OpenMMLab stack, tests, and this project ----------------------------------
if [ "$(cat "$STAMP_FILE" 2>/dev/null)" != "$REQ_STAMP" ]; then
  say "installing requirements.txt and this project (editable)"
  $PIP install -q -r "$REPO/requirements/runtime.txt" -r "$REPO/requirements/tests.txt"
  $PIP install -q --no-deps --no-build-isolation -e "$REPO"
  echo "$REQ_STAMP" > "$STAMP_FILE"
else
  say "requirements unchanged since last set-up (stamp $REQ_STAMP): pip skipped"
fi

# --- 5. compiled parts of msvmamba_ops (cached by source hash outside the clone) ------
if [ -f "$REPO/msvmamba_ops/build.py" ]; then
  say "building msvmamba_ops extensions (cached in $CACHE/ext)"
  MSVMAMBA_CACHE="$CACHE" $PYBIN -m msvmamba_ops.build
fi

$PYBIN - <<'PYEOF'
import mmcv, mmcv.ops, mmdet, mmseg, mmpretrain, mmengine, torch, triton
print(f"[setup] ok: torch {torch.__version__} (cuda {torch.version.cuda}), mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, "
      f"mmpretrain {mmpretrain.__version__}, triton {triton.__version__}")
PYEOF
say "done. Activate with: source ${VENV#$REPO/}/bin/activate"
