"""Selective-scan ops for MSVMamba.

``selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
out_float=False, backend=None)`` with autograd, dispatched to the fastest available of five
backends (``BACKENDS``): 'cuda' (compiled CUDA kernels), 'triton', 'cpu' (fused C++
kernel), 'chunked' (parallel scan from plain torch ops: any device, what export records)
and 'reference' (the PyTorch loop, the test oracle); registered as the torch.library ops
``msvmamba::selective_scan_fwd`` / ``_bwd``. A backend is a module with the protocol of
:mod:`msvmamba_ops.backend`, listed in ``scan.REGISTRY``.
Also: the fused CPU inference ops of the backbone (:mod:`msvmamba_ops.cpu_fused`), the
scan-direction indices (:mod:`msvmamba_ops.scan_order`), the graph-recording predicates
(:mod:`msvmamba_ops.graph_mode`) and FLOP counting for mmengine.analysis
(:mod:`msvmamba_ops.flops`).
"""
from .reference import selective_scan_ref
from .scan import (BACKENDS, ENV_BACKEND, backend_unavailable_reason, resolve_backend,
                   selective_scan)

__all__ = ['selective_scan', 'selective_scan_ref', 'resolve_backend',
           'backend_unavailable_reason', 'BACKENDS', 'ENV_BACKEND']
