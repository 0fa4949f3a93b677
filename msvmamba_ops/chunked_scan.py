"""Parallel selective scan from standard tensor ops: the 'chunked' backend.

No loop over time steps and no custom kernel: pads, reshapes, ``exp``, ``cumsum``, products
and sums only. Any device, float64 included. It is what ONNX export (and ``torch.export``)
records for the scan, what ``torch.compile`` / Inductor traces when the backend is
'chunked' (it runs inline, not as the opaque custom op: ``SUPPORT.inline``), and the fast
path on devices without a compiled kernel (MPS, XPU, ...).

The recurrence, per (batch, channel, state) sequence, is ``h_t = a_t h_{t-1} + x_t`` with
``a_t = exp(s_t)``, ``s_t = dt_t A`` and ``x_t = dt_t B_t u_t``. The time axis is cut into
chunks of ``CHUNK`` steps. Inside a chunk starting at step c, with ``P_j = s_{c+1} + ... +
s_{c+j}`` (``P_0 = 0``)::

    h_{c+j} = exp(P_j) * (exp(s_c) * h_{c-1} + sum_{i<=j} exp(-P_i) x_{c+i})

so a chunk costs two cumsums, two exps and a few products: work linear in L. The states
entering the chunks, ``h_{c-1}``, obey the same recurrence one level up (decay = the
chunk's summed log decay, input = the chunk's end state with zero carry-in), solved by the
same function on an L / CHUNK long sequence, and so on until one chunk is left. Levels
come in pairs (``GROUP``): the sequence is padded to a multiple of ``CHUNK ** 2`` and cut
into (blocks, CHUNK, CHUNK), whose two chunk axes are scanned in turn (steps within a
chunk, then chunks within a block) before the blocks go one call up; the states then come
back down the same axes. One padding and one set of reshapes serve two levels.

Numerics (float32; float64 alike with its own bounds):

* ``exp(P_j) exp(-P_i) = exp(P_j - P_i)`` is only safe while both factors stay finite and
  normal, so the per-step (and per-chunk) log decay is floored at ``-18`` (float64:
  ``-40``): a decay ``exp(s) < exp(-18) = 1.5e-8`` is below float32 resolution (2^-24 =
  6e-8) relative to the state it multiplies, and raising it to ``1.5e-8`` changes every
  state by less than that fraction of the largest state. With ``CHUNK = 4`` the exponents
  then stay within ``3 * 18 = 54`` (``e^54 = 2.8e23``): no overflow, no denormals.
* The cumsum of rescaled terms only adds terms ``<= j`` (causal), so its rounding error at
  step j is ``eps * sum_{i<=j} exp(P_j - P_i) |x_i|``, the conditioning of the sequential
  recurrence itself; there is no cancellation between large growing and decaying factors.
* Products of decays are never formed step by step: the decay over many steps is
  ``exp(sum of log decays)``, which is more accurate than a product of rounded ``a_t``
  when the decays are close to 1 (long memory).

Gradients: the adjoint recurrence (d loss / d h) is the same recurrence backwards in time,
solved by the same chunked function; the gradient of each log decay is then formed
directly (``g_t h_{t-1} a_t``) rather than by autograd through the cumsums, which would
subtract two nearly equal sums when a decay is strong. Only the inputs are saved; the
states are recomputed in the backward.

Exported graphs cannot branch on the (symbolic) length, so under export / compilation the
padding is always applied and the number of levels is fixed to ``EXPORT_LEVELS``, which
covers sequences up to ``CHUNK ** EXPORT_LEVELS`` = 1,048,576 steps (a 4096 x 4096 image
at stride 4); the extra levels run on single-block tensors and cost little. Recorded
graphs also run time-major, (Bt, L, channels) instead of (Bt, channels, L): the chunk
axes are then middle axes with the channels contiguous inside, which an op-by-op runtime
(ONNX Runtime) cumsums, slices and pads several times faster than short innermost axes.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import ALL_DTYPES, Support
from .graph_mode import recording_graph

CHUNK = 4
GROUP = 2  # chunk levels per padding step
EXPORT_LEVELS = 10
# ln(1 / decay) beyond which a decay is below the dtype's resolution: 2^-24 (float32)
# and 2^-53 (float64) are e^-16.6 and e^-36.7.
LOG_DECAY_FLOOR = {torch.float32: -18.0, torch.float64: -40.0}
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default


def softplus(v: Tensor) -> Tensor:
    """torch's softplus (``log1p(exp(v))``, ``v`` itself above 20) in ops every exporter
    knows; the exp never overflows, so its gradient is finite everywhere. The maximum is
    torch's threshold branch in one op: above 20 it returns ``v`` (``log1p(exp(20))``
    rounds to 20), below it ``log1p(exp(v)) > v``. (ONNX's own Softplus op took longer
    than all of these together in ONNX Runtime 1.32 on CPU.)"""
    return torch.maximum(v, torch.log1p(torch.exp(torch.clamp(v, max=SOFTPLUS_THRESHOLD))))


def linear_recurrence(s: Tensor, x: Tensor, levels: Optional[int] = None,
                      dim: int = -1) -> Tensor:
    """``h_t = exp(s_t) h_{t-1} + x_t`` along dim ``dim`` with ``h_{-1} = 0``.

    ``s`` (log decays, already floored, see the module docstring) and ``x`` have the same
    shape. ``levels``: the chunk levels to use, for sequences up to ``CHUNK ** levels``
    long (None: as many as the length needs, which requires a concrete length).
    """
    shape = x.shape
    dim = dim % len(shape)
    # (rows, L, columns): every level reuses these two sizes, so that a recorded graph
    # computes them once (reshape, not unflatten / flatten: those record the example's)
    rows, columns = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    h = _recurrence(s.reshape(rows, -1, columns), x.reshape(rows, -1, columns), levels,
                    rows, columns)
    return h.reshape(shape)


def _recurrence(s: Tensor, x: Tensor, levels: Optional[int], rows, columns) -> Tensor:
    """:func:`linear_recurrence` along dim 1 of (rows, L, columns) tensors."""
    length = x.shape[1]
    if levels is None:
        depth = 1 if length <= CHUNK else GROUP
        last = length <= CHUNK**depth
    else:
        depth, last = min(GROUP, levels), levels <= GROUP
    pad = -length % CHUNK**depth
    if levels is not None or pad:  # under export always pad (maybe by 0)
        s, x = F.pad(s, (0, 0, 0, pad)), F.pad(x, (0, 0, 0, pad))
    # time -> (blocks, CHUNK, ..., CHUNK): ``depth`` chunk axes, the last one consecutive
    # steps; each chunk axis is scanned in turn, from the last one out.
    blocks = (rows, -1) + (CHUNK, ) * depth + (columns, )
    s, x = s.reshape(blocks), x.reshape(blocks)
    sweep = []
    for axis in range(1 + depth, 1, -1):
        P = torch.cumsum(s, axis)                         # log decay from the chunk start
        first = P.select(axis, 0).unsqueeze(axis)         # the first step's own decay
        grow = torch.exp(P - first)                       # in [e^-54, 1]
        Q = torch.cumsum(x / grow, axis)                  # zero carry-in, rescaled
        sweep.append((axis, first, grow, Q))
        # one level up: each chunk's decay and its end state with zero carry-in
        s = torch.clamp(P.select(axis, CHUNK - 1), min=LOG_DECAY_FLOOR[x.dtype])
        x = grow.select(axis, CHUNK - 1) * Q.select(axis, CHUNK - 1)
    entering = None                                       # the state before each chunk
    if not last:
        ends = _recurrence(s, x, None if levels is None else levels - depth, rows, columns)
        entering = F.pad(ends.narrow(1, 0, ends.shape[1] - 1), (0, 0, 1, 0))
    for axis, first, grow, Q in reversed(sweep):
        if entering is not None:
            Q = Q + torch.exp(first) * entering.unsqueeze(axis)
        h = grow * Q                                      # the states at this level
        if axis < 1 + depth:  # the state before each chunk of the next axis in
            before = h.narrow(axis, 0, CHUNK - 1)
            entering = (F.pad(before, (0, 0) * (h.dim() - 1 - axis) + (1, 0))
                        if entering is None else torch.cat([entering.unsqueeze(axis), before],
                                                           axis))
    h = h.reshape(rows, -1, columns)
    return h if levels is None and not pad else h.narrow(1, 0, length)


def _discretize(u, delta, A, B, C, delta_bias, delta_softplus, time_major=False):
    """Accumulation-dtype tensors in the (Bt, G, D/G, N, L) layout, where the channels of a
    group share their B, C rows by broadcasting: v = delta + bias and dt ((Bt, D, L)),
    dt, u ((Bt, G, D/G, 1, L)), A (G, D/G, N, 1), B, C ((Bt, G, 1, N, L)) and the
    unfloored log decays dt A. ``time_major``: the time axis first after the batch instead
    of last ((Bt, L, D), (Bt, L, G, D/G, 1), (G, D/G, N), (Bt, L, G, 1, N), ...)."""
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups, nstate = B.shape[1], B.shape[2]
    v, u = delta.to(acc), u.to(acc)
    bias = None if delta_bias is None else delta_bias.to(acc)
    if time_major:  # (shapes are read after the transposes, which a runtime may cancel)
        v, u = v.transpose(1, 2), u.transpose(1, 2)
        A5 = A.to(acc).reshape(groups, -1, nstate)
        B5, C5 = (t.to(acc).permute(0, 3, 1, 2).unsqueeze(3) for t in (B, C))
    else:
        A5 = A.to(acc).reshape(groups, -1, nstate, 1)
        B5, C5 = B.to(acc).unsqueeze(2), C.to(acc).unsqueeze(2)
        bias = None if bias is None else bias.unsqueeze(-1)
    if bias is not None:
        v = v + bias
    dt = softplus(v) if delta_softplus else v
    channels = 2 if time_major else 1
    per_group = v.shape[:channels] + (groups, -1) + v.shape[channels + 1:]
    dt5, u5 = (t.reshape(per_group).unsqueeze(channels + 2) for t in (dt, u))
    return v, dt, dt5, u5, A5, B5, C5, dt5 * A5


def _levels() -> Optional[int]:
    return EXPORT_LEVELS if recording_graph() else None


def _states(dt5, u5, B5, log_decay, dim=-1):
    """The states h (Bt, G, D/G, N, L), or (Bt, L, G, D/G, N) with ``dim`` 1."""
    s = torch.clamp(log_decay, min=LOG_DECAY_FLOOR[log_decay.dtype])
    return linear_recurrence(s, (dt5 * u5) * B5, _levels(), dim), s


def _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    # Recorded graphs run time-major (module docstring): the layout copies of u, delta in
    # and y out cost less than that saves, and a runtime cancels those that undo the
    # caller's own (the backbone's token-major sequences).
    time_major = recording_graph()
    _, _, dt5, u5, A5, B5, C5, log_decay = _discretize(u, delta, A, B, C, delta_bias,
                                                      delta_softplus, time_major)
    h, _ = _states(dt5, u5, B5, log_decay, 1 if time_major else -1)
    y = h * C5
    nstate = -1 if time_major else 3
    if C5.shape[nstate] > 1:  # sum over the N states (N = 1: nothing to sum)
        y = y.sum(nstate, keepdim=True)
    if D is not None:
        y = y + D.to(y.dtype).reshape(A5.shape[:2] + (1, ) * (A5.dim() - 2)) * u5
    y = y.reshape(u5.shape[:2] + (-1, )).transpose(1, 2) if time_major else y.reshape(u.shape)
    return y if out_float and u.dtype != torch.float64 else y.to(u.dtype)


def _gradients(u, delta, A, B, C, D, delta_bias, dout, delta_softplus):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) (None for a missing D / delta_bias).

    The adjoint ``g_t = dout_t C_t + a_{t+1} g_{t+1}`` (d loss / d h_t) is the same linear
    recurrence run backwards in time, solved by :func:`linear_recurrence` on the flipped
    sequence; the gradient of each log decay is then formed directly as ``g_t h_{t-1}
    a_t`` with the unfloored decay. (Autograd through the chunked forward would form it as
    a difference of two cumsums, which cancels when a decay is strong.)"""
    v, dt, dt5, u5, A5, B5, C5, log_decay = _discretize(u, delta, A, B, C, delta_bias,
                                                        delta_softplus)
    h, s = _states(dt5, u5, B5, log_decay)
    gy = dout.to(h.dtype).reshape(u5.shape)
    decay_next = F.pad(s[..., 1:], (0, 1))               # a_{t+1}; g_L = 0
    g = linear_recurrence(decay_next.flip(-1), (gy * C5).flip(-1), _levels()).flip(-1)
    g_decay = g * F.pad(h[..., :-1], (1, 0)) * torch.exp(log_decay)  # d loss / d (dt A)
    gB = (g * B5).sum(3, keepdim=True)
    ddt = (g_decay * A5).sum(3, keepdim=True) + gB * u5
    du = gB * dt5
    if D is not None:
        du = du + gy * D.to(h.dtype).reshape(u5.shape[1:3] + (1, 1))
    dA = (g_decay * dt5).sum((0, 4)).reshape(A.shape)
    dB = (g * dt5 * u5).sum(2).reshape(B.shape)
    dC = (gy * h).sum(2).reshape(C.shape)
    ddt = ddt.reshape(u.shape)
    if delta_softplus:  # torch's softplus gradient: sigmoid(v), 1 above the threshold
        ddt = ddt * torch.where(v > SOFTPLUS_THRESHOLD, torch.ones_like(v), torch.sigmoid(v))
    u_acc = u5.reshape(u.shape)
    return (du.reshape(u.shape).to(u.dtype), ddt.to(delta.dtype), dA.to(A.dtype),
            dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else (gy.reshape(u.shape) * u_acc).sum((0, 2)).to(D.dtype),
            None if delta_bias is None else ddt.sum((0, 2)).to(delta_bias.dtype))


class _ChunkedScan(torch.autograd.Function):
    """The chunked forward with the adjoint backward of :func:`_gradients` (the inputs are
    saved, the states recomputed)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)

    @staticmethod
    def backward(ctx, dout):
        grads = _gradients(*ctx.saved_tensors, dout, ctx.delta_softplus)
        return grads + (None, None)


# ---- the backend protocol (msvmamba_ops/backend.py): on validated, normalised inputs ----

SUPPORT = Support(devices=None, dtypes=ALL_DTYPES, inline=True)


def unavailable_reason(device_type: str, dtype: torch.dtype = torch.float32,
                       build: bool = False) -> Optional[str]:
    return SUPPORT.unsupported(device_type, dtype)


def scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
         D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
         delta_softplus: bool = False, out_float: bool = False) -> Tensor:
    """The selective scan of :func:`msvmamba_ops.selective_scan` (same arguments, shapes and
    dtype policy: float32 arithmetic, float64 for float64 inputs), differentiable: what
    ``selective_scan`` runs inline for this backend. B, C: (Bt, G, N, L) or (Bt, N, L).
    Without gradients (inference, export) it is the plain forward ops; with them, an
    autograd function with the adjoint backward."""
    args = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        return _ChunkedScan.apply(*args, bool(delta_softplus), bool(out_float))
    return _forward(*args, delta_softplus, out_float)


def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_float: bool):
    with torch.no_grad():
        return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus: bool):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias): see :func:`_gradients`."""
    with torch.no_grad():
        return _gradients(u, delta, A, B, C, D, delta_bias, dout, delta_softplus)


__all__ = ['scan', 'linear_recurrence', 'softplus', 'SUPPORT', 'unavailable_reason', 'fwd',
           'bwd', 'CHUNK', 'EXPORT_LEVELS', 'LOG_DECAY_FLOOR']
