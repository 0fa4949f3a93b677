"""The ``cpu`` backend: fused C++ kernel (``csrc/cpu/selective_scan_cpu.cpp``), forward and
backward, parallel over rows with OpenMP, vectorised (AVX2/AVX-512 copies picked at run time
on x86-64). CPU tensors only, float64 included; the protocol of :mod:`msvmamba_ops.backend`.
"""
from typing import Dict, Optional

import torch

from .backend import ALL_DTYPES, Support
from .build import ExtensionError, cache_root, load_extension

SUPPORT = Support(devices=('cpu', ), dtypes=ALL_DTYPES)

# Why the cached build could not be opened, per cache folder: probing again would hash the
# sources on every scan call (~0.2 ms) when the kernel is not built.
_failed_probes: Dict[str, str] = {}


def ops(build: bool = True):
    """``torch.ops.msvmamba_cpu`` (fwd, bwd, isa), loading (and if needed building) it."""
    return load_extension('cpu', build=build)


def unavailable_reason(device_type: str = 'cpu', dtype: torch.dtype = torch.float32,
                       build: bool = False) -> Optional[str]:
    """None if the kernel can be used on such tensors (without compiling, unless
    ``build``), else why not. A failed probe without ``build`` is remembered for the
    process (per cache folder)."""
    unsupported = SUPPORT.unsupported(device_type, dtype)
    if unsupported is not None:
        return unsupported
    root = str(cache_root())
    if not build and root in _failed_probes:
        return _failed_probes[root]
    try:
        ops(build=build)
    except ExtensionError as exc:
        if not build:
            _failed_probes[root] = str(exc)
        return str(exc)
    _failed_probes.pop(root, None)
    return None


def isa() -> str:
    """The instruction set the kernel runs with on this CPU (e.g. 'avx2')."""
    return ops().isa()


def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool):
    return ops().fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus: bool):
    dout = dout.to(A.dtype).contiguous()  # the kernel reads dout in the accumulation dtype
    du, ddelta, dA, dB, dC, dD, dbias = ops().bwd(u, delta, A, B, C, D, delta_bias, dout,
                                                  delta_softplus)
    return (du, ddelta, dA, dB, dC, None if D is None else dD,
            None if delta_bias is None else dbias)


__all__ = ['SUPPORT', 'unavailable_reason', 'fwd', 'bwd', 'isa', 'ops']
