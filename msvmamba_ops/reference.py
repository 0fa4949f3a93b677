"""Plain sequential PyTorch selective scan: the oracle the fast backends are tested against.

Semantics (spec §3.6), for batch b, channel d, state n, time t, with h_{-1} = 0:
    dt_{b,d,t}   = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    h_{b,d,n,t}  = exp(dt * A_{d,n}) * h_{b,d,n,t-1} + dt * B_{b,g,n,t} * u_{b,d,t}
    y_{b,d,t}    = sum_n C_{b,g,n,t} * h_{b,d,n,t} + D_d * u_{b,d,t}
where channel d belongs to group g = d // (D / G).

It loops over time with one vectorised step over all (batch, channel, state) per index, is
differentiable by autograd and runs in float64 when given float64 inputs (gradcheck).
"""
from typing import Optional

import torch
import torch.nn.functional as F


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                       B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       out_float: bool = False) -> torch.Tensor:
    """Reference selective scan. Shapes: u, delta (Bt, D, L); A (D, N);
    B, C (Bt, G, N, L) or (Bt, N, L); D, delta_bias (D,). Returns (Bt, D, L).

    Computes in float32 (or float64 if u is float64); returns u's dtype, or float32 when
    ``out_float`` is set.
    """
    in_dtype = u.dtype
    acc = torch.float64 if in_dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups, nstate = B.shape[1], B.shape[2]
    u, delta = u.to(acc), delta.to(acc)
    A, B, C = A.to(acc), B.to(acc), C.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # log1p(exp(v)) for v <= 20, v above: same as spec
    # Expand groups to channels: (Bt, G, N, L) -> (Bt, D, N, L).
    B = B.repeat_interleave(dim // groups, dim=1)
    C = C.repeat_interleave(dim // groups, dim=1)
    dA = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])          # (Bt, D, N, L)
    dBu = delta.unsqueeze(2) * B * u.unsqueeze(2)                      # (Bt, D, N, L)
    h = u.new_zeros(batch, dim, nstate)
    ys = []
    for t in range(length):
        h = dA[..., t] * h + dBu[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    return y if out_float and in_dtype != torch.float64 else y.to(in_dtype)
