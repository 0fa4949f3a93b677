"""Fused CPU inference passes of the MSVMamba block: ``msvmamba_cpu::ms2d_branch`` (a token
mixer branch) and ``msvmamba_cpu::convffn_dwconv_gelu`` (the middle of the ConvFFN).

The backbone's autograd path runs a branch of its token mixer as a chain of ops (layout copy
or gather into channel-major sequences, x/dt projections as matmuls, :func:`selective_scan`,
LayerNorm, a gather + sum merging the scan directions, upsampling, pooling and gating
passes). When no gradient is needed, on float32 CPU tensors, the backbone calls this op
instead: one pass per scan step over the step's E channels does all of that (the kernel's
header comment, ``csrc/cpu/ms2d_cpu.cpp``, lists the math); likewise for the ConvFFN's bias,
depthwise conv, residual and GELU (``csrc/cpu/convffn_cpu.cpp``). Same results to float32
rounding; ``tests/ops/test_cpu_fused.py`` checks the ops against the unfused ones and
``tests/backbone`` the whole backbone against the official reference outputs.

The fused pass contains its own scan, so it is used only when the scan backend is left to
``auto`` or set to ``cpu`` (``MSVMAMBA_SCAN_BACKEND``); ``MSVMAMBA_FUSED_CPU=0`` turns it
off (e.g. to time the unfused ops).
"""
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import cpu_scan
from .scan import ENV_BACKEND

ENV_FUSED = 'MSVMAMBA_FUSED_CPU'
_available: Optional[bool] = None


def is_available() -> bool:
    """True if the fused op is built and the environment allows it (see module docstring)."""
    global _available
    if os.environ.get(ENV_FUSED, '1') == '0':
        return False
    if os.environ.get(ENV_BACKEND, 'auto') not in ('auto', 'cpu'):
        return False
    if _available is None:
        _available = cpu_scan.is_available() and hasattr(cpu_scan.ops(), 'ms2d_branch')
    return _available


def ms2d_branch(x: Tensor,
                conv_weight: Tensor,
                conv_bias: Optional[Tensor],
                stride: int,
                padding: int,
                order: Optional[Tensor],
                x_proj_weight: Tensor,
                dt_proj_weight: Tensor,
                dt_bias: Tensor,
                A: Tensor,
                D: Optional[Tensor],
                norm: Optional[Tuple[Tensor, Tensor]],
                eps: float,
                silu: bool = True,
                low: Optional[Tensor] = None,
                nearest: bool = False,
                post_norm: Optional[Tuple[Tensor, Tensor]] = None,
                z: Optional[Tensor] = None,
                pool: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """One branch of MultiScaleSS2D, forward only, float32 CPU tensors.

    Args:
        x: (B, Hin, Win, E) channel-last map before the branch's depthwise conv.
        conv_weight, conv_bias, stride, padding: the depthwise conv ((E, 1, k, k) weight,
            (E,) bias or None, zero padding); its output map is (H, W).
        order: (K*H*W,) int64, the map position of each scan step (K directions, each a
            permutation of the positions), or None: one row-major direction.
        x_proj_weight: (R + 2N, E); dt_proj_weight: (E, R); dt_bias: (E,);
        A: (E, N), already ``-exp(A_log)``; D: (E,) or None.
        norm: (weight, bias) of a LayerNorm applied to each step's output before the
            directions are merged (master's per-branch out_norm), or None.
        eps: LayerNorm epsilon (both norms).
        silu: apply SiLU to the conv output.
        low, nearest, post_norm, z, pool: the full-resolution epilogue (one direction only):
            add ``low`` (B, h, w, E) upsampled to (H, W) (bilinear, align_corners=False, or
            nearest), then LayerNorm ``post_norm`` (v3's merged out_norm), sum the result
            over positions if ``pool`` (squeeze-excite input), multiply by SiLU(z) for a
            (B, H*W, E) gate ``z``.

    Returns:
        (out, pooled): out (B, H*W, E) float32; pooled (B, E) sums over positions when
        ``pool``, else None.
    """
    nw, nb = norm if norm is not None else (None, None)
    pw, pb = post_norm if post_norm is not None else (None, None)
    out, pooled = cpu_scan.ops().ms2d_branch(x, conv_weight, conv_bias, stride, padding, silu,
                                             order, x_proj_weight, dt_proj_weight, dt_bias, A,
                                             D, nw, nb, float(eps), low, nearest, pw, pb, z,
                                             pool)
    return out, (pooled if pool else None)


def convffn_dwconv_gelu(h: Tensor, in_bias: Optional[Tensor], weight: Tensor,
                        bias: Optional[Tensor]) -> Tensor:
    """``GELU(t + dwconv(t) + bias)`` with ``t = h + in_bias``, forward only, float32 CPU.

    Args:
        h: (B, H, W, F) channel-last map (the ConvFFN's linear1 output without its bias).
        in_bias: (F,) added to h first (linear1's bias), or None.
        weight: (F, 1, k, k) depthwise kernel, k odd, stride 1, zero padding k // 2.
        bias: (F,) conv bias or None.

    Returns:
        (B, H, W, F) float32; GELU is the exact (erf) form.
    """
    return cpu_scan.ops().convffn_dwconv_gelu(h, in_bias, weight, bias)


def can_replace(module: torch.nn.Module, x: Tensor) -> bool:
    """Whether a fused op may stand in for ``module``'s forward on ``x``: float32 CPU
    tensors outside autocast and tracing, no gradient needed, the op built and allowed
    (:func:`is_available`)."""
    if x.device.type != 'cpu' or x.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled('cpu'):  # the module's matmuls would return bf16/fp16
        return False
    # Tracers (torch.jit.trace, which mmengine's FlopAnalyzer uses; torch.compile) record
    # the plain modules' ops: FLOP handles and graph passes know those.
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (x.requires_grad
                                    or any(p.requires_grad for p in module.parameters())):
        return False
    return is_available()


__all__ = ['ms2d_branch', 'convffn_dwconv_gelu', 'can_replace', 'is_available', 'ENV_FUSED']
