"""CUDA backend for the selective scan: the compiled kernels of ``csrc/cuda/``.

The protocol of :mod:`msvmamba_ops.backend`: CUDA tensors, u, delta, B, C in fp32, fp16 or
bf16 (one dtype; no float64), A, D, delta_bias fp32, fp32 arithmetic; ``dout`` may have
u's dtype or be fp32. The kernels (design in ``csrc/cuda/selective_scan.cu``; ops
``torch.ops.msvmamba_cuda.{fwd,bwd}``) are built by ``msvmamba_ops/build.py`` (entry
``'cuda'``) into the cache outside the clone, by ``bash tools/setup.sh`` or
``python -m msvmamba_ops.build cuda``; this module only loads a finished build and never
compiles on the fly (``build=True`` changes nothing). A build holds kernels for the GPU
architectures it was made for (``TORCH_CUDA_ARCH_LIST``, recorded by ``build.py``); on a
GPU none of them can run on, :func:`unavailable_reason` says so and how to rebuild, and
the automatic choice falls back to Triton with that warning (once per process).
"""
from typing import Dict, Optional

import torch

from . import build as _build
from .backend import NO_FLOAT64, Support

SUPPORT = Support(devices=('cuda', ), dtypes=NO_FLOAT64)

NOT_BUILT = ('the CUDA selective-scan extension is not built; run `bash tools/setup.sh` on a '
              'machine with nvcc (or `python -m msvmamba_ops.build cuda`)')


def _module():
    """torch.ops.msvmamba_cuda (fwd, bwd, config) from the built extension."""
    try:
        return _build.load_extension('cuda', build=False)
    except _build.ExtensionError as exc:
        raise RuntimeError(f'msvmamba_ops: {NOT_BUILT}. ({exc})') from exc


_missing = False  # the probe failed once: not built (a build later in this process is not seen)
_device_reasons: Dict[int, Optional[str]] = {}  # CUDA device index -> unavailable_reason


def _arch_mismatch(index: int) -> Optional[str]:
    """Why the build has no kernel for CUDA device ``index`` (with the fix), or None."""
    built = _build.built_cuda_arch_list('cuda')
    major, minor = torch.cuda.get_device_capability(index)
    if built is None or _build.code_for_device(built, (major, minor)) is not None:
        return None
    return (f'the CUDA selective-scan extension was built for TORCH_CUDA_ARCH_LIST="{built}", '
            f'which has no kernel for this GPU ({torch.cuda.get_device_name(index)}, compute '
            f'capability {major}.{minor}); rebuild it with `TORCH_CUDA_ARCH_LIST="{built};'
            f'{major}.{minor}" python -m msvmamba_ops.build cuda` (or set that '
            'TORCH_CUDA_ARCH_LIST for `bash tools/setup.sh`)')


def unavailable_reason(device_type: str = 'cuda', dtype: torch.dtype = torch.float32,
                       build: bool = False) -> Optional[str]:
    """None if the compiled kernels can run on such tensors on the current CUDA device, else
    why not (not CUDA tensors or a dtype they do not take, no device, not built, or built
    for other GPU architectures) and how to fix it."""
    global _missing
    unsupported = SUPPORT.unsupported(device_type, dtype)
    if unsupported is not None:
        return unsupported
    if not torch.cuda.is_available():
        return 'no CUDA device is visible'
    if _missing:
        return NOT_BUILT
    try:
        _module()
    except RuntimeError:
        _missing = True  # the dispatcher asks on every call: hash the sources only once
        return NOT_BUILT
    index = torch.cuda.current_device()
    if index not in _device_reasons:
        _device_reasons[index] = _arch_mismatch(index)
    return _device_reasons[index]


def _c(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool) -> torch.Tensor:
    return _module().fwd(_c(u), _c(delta), _c(A), _c(B), _c(C), _c(D), _c(delta_bias),
                         bool(delta_softplus), bool(out_float))


def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus: bool):
    return tuple(_module().bwd(_c(u), _c(delta), _c(A), _c(B), _c(C), _c(D), _c(delta_bias),
                               _c(dout), bool(delta_softplus)))
