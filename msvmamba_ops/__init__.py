"""Selective-scan ops for MSVMamba.

``selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
out_float=False, backend=None)`` with autograd, dispatched to the fastest available backend
('cpu' fused C++ kernel, 'cuda' compiled kernel, 'triton', or the 'reference' PyTorch loop);
registered as the torch.library ops ``msvmamba::selective_scan_fwd`` / ``_bwd``.
FLOP counting for mmengine.analysis: :mod:`msvmamba_ops.flops`.
"""
from .reference import selective_scan_ref
from .scan import (BACKENDS, ENV_BACKEND, backend_unavailable_reason, resolve_backend,
                   selective_scan)

__all__ = ['selective_scan', 'selective_scan_ref', 'resolve_backend',
           'backend_unavailable_reason', 'BACKENDS', 'ENV_BACKEND']
