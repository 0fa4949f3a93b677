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
#   FORCE_CUDA=1    build mmcv's CUDA ops (needs nvcc and a CUDA build of torch)
#   MAX_JOBS        parallel compile jobs (default: number of cores)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MSVMAMBA_VENV:-$REPO/.venv}
CACHE=${MSVMAMBA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/msvmamba-mm}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
MMCV_VERSION=2.1.0
T0=$(date +%s)

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
except Exception:
    pass
PYEOF
}
PROBE=$(probe)
if grep -q '^torch ' <<<"$PROBE"; then
  say "torch already installed: $(awk '/^torch /{print $3, "cuda", $4}' <<<"$PROBE") (kept)"
else
  say "installing torch/torchvision (requirements/torch.txt; ~1 min, 5.5 GB)"
  $PIP install -q -r "$REPO/requirements/torch.txt"
  PROBE=$(probe)
fi
TORCH_TAG=$(awk '/^torch /{print $2}' <<<"$PROBE")
[ -n "$TORCH_TAG" ] || die "torch does not import in $VENV after installing it"

# --- 3. mmcv with compiled ops, built against this torch ------------------------------
if grep -qx "mmcv $MMCV_VERSION" <<<"$PROBE"; then
  say "mmcv $MMCV_VERSION with ops already installed"
else
  if [ "${FORCE_CUDA:-0}" = "1" ]; then OPS=cuda; else OPS=cpu; fi
  WHEEL_DIR="$CACHE/mmcv/$MMCV_VERSION-torch$TORCH_TAG-$OPS"
  WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHEEL" ]; then
    say "building mmcv $MMCV_VERSION with $OPS ops against torch $TORCH_TAG (slow: ~10 min on 2 idle cores)"
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
    rm -rf "$SRC"
    say "mmcv built in $(( $(date +%s) - B0 )) s, cached in $WHEEL_DIR"
    WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl | head -1)
  else
    say "using cached mmcv wheel $WHEEL"
  fi
  $PIP install -q --no-deps --force-reinstall "$WHEEL"
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
