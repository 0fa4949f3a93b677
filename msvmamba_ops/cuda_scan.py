"""CUDA backend for the selective scan: the compiled kernels of ``csrc/cuda/``.

Backend interface (docs/TEAM_NOTES.md)::

    fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float) -> out
    bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus)
        -> (du, ddelta, dA, dB, dC, dD or None, ddelta_bias or None)

u, delta, B, C in fp32, fp16 or bf16 (one dtype); A, D, delta_bias fp32; fp32 arithmetic.
``dout`` may have u's dtype or be fp32. The kernels (design in ``csrc/cuda/selective_scan.cu``;
ops ``torch.ops.msvmamba_cuda.{fwd,bwd}``) are built by ``msvmamba_ops/build.py`` (entry
``'cuda'``) into the cache outside the clone, by ``bash tools/setup.sh`` or
``python -m msvmamba_ops.build cuda``; this module only loads a finished build and never
compiles on the fly.
"""
from typing import Optional

import torch

from . import build as _build

NOT_BUILT = ('the CUDA selective-scan extension is not built; run `bash tools/setup.sh` on a '
              'machine with nvcc (or `python -m msvmamba_ops.build cuda`)')


def _module():
    """torch.ops.msvmamba_cuda (fwd, bwd, config) from the built extension."""
    try:
        return _build.load_extension('cuda', build=False)
    except _build.ExtensionError as exc:
        raise RuntimeError(f'msvmamba_ops: {NOT_BUILT}. ({exc})') from exc


_missing = False  # the probe failed once: not built (a build later in this process is not seen)


def is_available() -> bool:
    """True if a CUDA device is visible and the extension is built for these sources."""
    global _missing
    if _missing or not torch.cuda.is_available():
        return False
    try:
        _module()
    except RuntimeError:
        _missing = True  # the dispatcher asks on every call: hash the sources only once
        return False
    return True


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool) -> torch.Tensor:
    return _module().fwd(_c(u), _c(delta), _c(A), _c(B), _c(C), _c(D), _c(delta_bias),
                         bool(delta_softplus), bool(out_float))


def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus: bool):
    return tuple(_module().bwd(_c(u), _c(delta), _c(A), _c(B), _c(C), _c(D), _c(delta_bias),
                               _c(dout), bool(delta_softplus)))
