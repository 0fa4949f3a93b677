"""Plain sequential PyTorch selective scan: the oracle the fast backends are tested against.

Semantics (docs/architecture.md §3.6), for batch b, channel d, state n, time t, with h_{-1} = 0:
    dt_{b,d,t}   = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    h_{b,d,n,t}  = exp(dt * A_{d,n}) * h_{b,d,n,t-1} + dt * B_{b,g,n,t} * u_{b,d,t}
    y_{b,d,t}    = sum_n C_{b,g,n,t} * h_{b,d,n,t} + D_d * u_{b,d,t}
where channel d belongs to group g = d // (D / G).

It loops over time with one vectorised step over all (batch, channel, state) per index, is
differentiable by autograd and runs in float64 when given float64 inputs (gradcheck).

It is also the 'reference' backend (the protocol of :mod:`msvmamba_ops.backend`): any device,
float64 included, and the last resort of the automatic choice. Its ``bwd`` is an explicit
reverse-time loop (a backend runs below autograd, so it cannot call autograd); the
tests check it against autograd through :func:`selective_scan_ref` and numerical gradients.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .backend import ALL_DTYPES, Support

SUPPORT = Support(devices=None, dtypes=ALL_DTYPES)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _discretize(u, delta, A, B, C, delta_bias, delta_softplus):
    """Accumulation-dtype tensors: v = delta + bias, dt, decay a = exp(dt A), input
    x = dt B u (all (Bt, D, N, L) but v, dt (Bt, D, L)) and B, C expanded to channels."""
    acc = _acc_dtype(u.dtype)
    dim = u.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]
    u, v, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        v = v + delta_bias.to(acc)[:, None]
    dt = F.softplus(v) if delta_softplus else v  # log1p(exp(v)) for v <= 20, v above
    # Expand groups to channels: (Bt, G, N, L) -> (Bt, D, N, L).
    B = B.to(acc).repeat_interleave(dim // groups, dim=1)
    C = C.to(acc).repeat_interleave(dim // groups, dim=1)
    a = torch.exp(dt.unsqueeze(2) * A[None, :, :, None])
    x = dt.unsqueeze(2) * B * u.unsqueeze(2)
    return u, v, dt, A, B, C, a, x


def _states(a, x):
    """h_t = a_t h_{t-1} + x_t over the last dim; unbind (not a[..., t]): its backward is one
    stack, where indexing would build a full-size zero gradient per step (quadratic in L)."""
    h = a.new_zeros(a.shape[:-1])
    hs = []
    for a_t, x_t in zip(a.unbind(-1), x.unbind(-1)):
        h = a_t * h + x_t
        hs.append(h)
    return torch.stack(hs, dim=-1) if hs else a.new_zeros(a.shape)


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
    uf, _, _, _, _, Cx, a, x = _discretize(u, delta, A, B, C, delta_bias, delta_softplus)
    h = a.new_zeros(a.shape[:-1])
    ys = []
    for a_t, x_t, C_t in zip(a.unbind(-1), x.unbind(-1), Cx.unbind(-1)):
        h = a_t * h + x_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(uf.shape)
    if D is not None:
        y = y + D.to(uf.dtype)[:, None] * uf
    return y if out_float and in_dtype != torch.float64 else y.to(in_dtype)


# ---- the backend protocol (msvmamba_ops/backend.py): on validated, normalised inputs ----

def unavailable_reason(device_type: str, dtype: torch.dtype = torch.float32,
                       build: bool = False) -> Optional[str]:
    return SUPPORT.unsupported(device_type, dtype)


def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool):
    with torch.no_grad():
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus: bool):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) by the adjoint recurrence, run backwards:
    g_t = dout_t C_t + a_{t+1} g_{t+1} is d loss / d h_t."""
    batch, dim, length = u.shape
    groups, nstate = B.shape[1], B.shape[2]
    uf, v, dt, Af, Bx, Cx, a, x = _discretize(u, delta, A, B, C, delta_bias, delta_softplus)
    h = _states(a, x)                                            # (Bt, D, N, L)
    h_prev = torch.cat([h.new_zeros(h.shape[:-1] + (1,)), h[..., :-1]], dim=-1)
    gy = dout.to(uf.dtype)
    carry = h.new_zeros(h.shape[:-1])
    gs = []
    for p_t, a_t in zip(reversed((gy.unsqueeze(2) * Cx).unbind(-1)), reversed(a.unbind(-1))):
        g = p_t + carry
        carry = a_t * g
        gs.append(g)
    g = torch.stack(gs[::-1], dim=-1) if gs else h.new_zeros(h.shape)
    ga = g * h_prev * a                                          # d loss / d (dt * A)
    ddt = (ga * Af[None, :, :, None] + g * Bx * uf.unsqueeze(2)).sum(2)
    dA = (ga * dt.unsqueeze(2)).sum((0, 3))
    du = (g * dt.unsqueeze(2) * Bx).sum(2)
    if D is not None:
        du = du + gy * D.to(uf.dtype)[:, None]

    def group_sum(t):  # (Bt, D, N, L) -> (Bt, G, N, L), summing the channels of each group
        return t.view(batch, groups, dim // groups, nstate, length).sum(2)

    dB = group_sum(g * dt.unsqueeze(2) * uf.unsqueeze(2))
    dC = group_sum(gy.unsqueeze(2) * h)
    if delta_softplus:  # torch's softplus gradient: sigmoid(v), 1 above the threshold 20
        ddt = ddt * torch.where(v > 20, torch.ones_like(v), torch.sigmoid(v))
    return (du.to(u.dtype), ddt.to(delta.dtype), dA, dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else (gy * uf).sum((0, 2)),
            None if delta_bias is None else ddt.sum((0, 2)))
