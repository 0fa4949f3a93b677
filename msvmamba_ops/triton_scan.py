"""Triton backend for the selective scan (forward and backward).

The protocol of :mod:`msvmamba_ops.backend`: CUDA tensors (or CPU tensors under Triton's
interpreter, ``TRITON_INTERPRET=1``, which the tests use), fp32, fp16 or bf16 (no float64).

Math (docs/architecture.md §3.6), per batch b, channel d (group g = d // (D / G)), state n, time t:
    dt_t = softplus(delta_t + bias) (or delta_t + bias),  a_t = exp(dt_t * A[d, n]),
    h_t = a_t * h_{t-1} + dt_t * B[g, n, t] * u_t,        y_t = sum_n C[g, n, t] h_t + D u_t.

Kernel design
-------------
* Grid ``(G * nblk, Bt)``: one program per (batch, block of ``BLOCK_D`` channels of ONE group),
  ``nblk = cdiv(D / G, BLOCK_D)``. Keeping a block inside one group means the program loads
  a single (N, BLOCK_L) tile of B and C and broadcasts it over its channels, and the
  reductions of dB / dC over channels are plain in-register sums.
* Each program walks the sequence in chunks of ``BLOCK_L`` time steps (L is the contiguous
  dimension, so every tile load and store is coalesced along L). A chunk is a
  (BLOCK_D, BLOCK_N, BLOCK_L) register tile; the first-order recurrence inside it is one
  ``tl.associative_scan`` along L with the operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2).
  The state carried from the previous chunk is folded into the first element
  (b_0 += a_0 h_carry), and the new carry is the scanned value at the last position.
  All arithmetic is fp32 whatever the input dtype.
* Backward recomputes everything from the inputs:
  1. the forward kernel runs once more without writing ``out`` and stores only the state at
     the end of every chunk but the last (a (Bt, D, n_chunks, N) fp32 workspace);
  2. the backward kernel walks the chunks in reverse. Per chunk it rebuilds h from the stored
     chunk-start state (forward scan) and the adjoint g_t = dL/dh_t from
     g_t = C_t dy_t + a_{t+1} g_{t+1} (a reverse ``tl.associative_scan``; a_{t+1} comes from
     a second, shifted load of delta; the carry g at the start of the later chunk is folded
     into the last element). Then
       du = dt sum_n g B + D dy,   ddt = u sum_n g B + sum_n g A (h_t - b_t),
       dA += sum_t g (h_t - b_t) dt,   dB = sum_d g dt u,   dC = sum_d dy h,
     where h_t - b_t = a_t h_{t-1}; ddelta = ddt * sigmoid(v) (1 above torch's threshold 20)
     under softplus.
  The loop body is done with the forward states (dC, a_t h_{t-1}) before the adjoint scan,
  so that fewer tiles are live at once; with the 32-bit in-block offsets (_program_setup)
  this keeps ptxas from spilling registers on sm_80 to sm_120 (tests/ops/test_triton_compile.py).
  dB / dC partial sums (one per channel block) go to a (Bt, G, nblk, N, L) buffer that is
  summed over ``nblk`` in torch (written straight into the result when nblk == 1); dA, dD and
  ddelta_bias are per-(batch, channel) partial sums reduced over the batch in torch. No
  atomics, so results are deterministic.
* Block sizes (``_config``): BLOCK_N = next power of two >= N; BLOCK_D up to 8 channels,
  halved until there are >= 4 programs per SM (each program is a serial walk over L, so
  MSVMamba's detection case, Bt * D = 2 * 192 and L ~ 67k, runs BLOCK_D = 1); BLOCK_L fills
  a 2048-element (forward) / 1024-element (backward) tile. These were sized from ptxas
  register reports (no spills on sm_80 to sm_120, tests/ops/test_triton_compile.py), not from
  timings: the kernels are built/compiled, not yet run on a GPU.
* NaN/Inf propagate like in the reference (no clamps/min/max on data; padding is masked
  with ``tl.where`` so 0 * Inf never leaks into sums); loop trip counts depend only on shapes.
"""
import contextlib
import functools
import os
from typing import Optional, Tuple

import torch

from .backend import NO_FLOAT64, Support

try:  # triton is optional: unavailable_reason() reports whether this backend can run.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

# Elements of one (BLOCK_D, BLOCK_N, BLOCK_L) register tile. Sized from ptxas reports with
# triton 3.8 (no spills on sm_80 to sm_120; on sm_90 at most 128 registers/thread forward and
# 145 backward at MSVMamba's N = 1).
_FWD_TILE = 2048
_BWD_TILE = 1024
_MIN_BLOCK_L = 16
_MAX_BLOCK_D = 8
_PROGRAMS_PER_SM = 4


SUPPORT = Support(devices=('cuda', ), dtypes=NO_FLOAT64)


def unavailable_reason(device_type: str = 'cuda', dtype: torch.dtype = torch.float32,
                       build: bool = False) -> Optional[str]:
    """None when triton imports and its kernels can run on such tensors: CUDA tensors with
    a CUDA device visible, or CPU tensors under the interpreter (``TRITON_INTERPRET=1``)."""
    interpret = os.environ.get('TRITON_INTERPRET', '0') == '1'
    if device_type != 'cuda' and not (interpret and device_type == 'cpu'):
        return 'it runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1)'
    unsupported = SUPPORT.unsupported('cuda', dtype)
    if unsupported is not None:
        return unsupported
    if triton is None:
        return 'triton cannot be imported; pip install triton'
    if not interpret and not torch.cuda.is_available():
        return 'no CUDA device is visible'
    return None


if triton is not None:

    @triton.jit
    def _combine(a1, b1, a2, b2):
        # (a1, b1) then (a2, b2): x -> a2 (a1 x + b1) + b2.
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _log1p(x):
        # Accurate log(1 + x) for x >= 0 without libdevice (Kahan's trick).
        w = 1.0 + x
        return tl.where(w == 1.0, x, tl.log(w) * (x / (w - 1.0)))

    @triton.jit
    def _delta_to_dt(v, SOFTPLUS: tl.constexpr):
        if SOFTPLUS:
            # torch's softplus (beta 1, threshold 20): v above 20, log1p(exp(v)) otherwise.
            # No clamp before exp: min/max would drop a NaN; exp's overflow is discarded.
            v = tl.where(v > 20.0, v, _log1p(tl.exp(v)))
        return v

    @triton.jit
    def _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """Load a (BLOCK_D, BLOCK_L) tile of delta and return (pre-activation v, dt)."""
        v = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v = v + bias[:, None]
        return v, _delta_to_dt(v, SOFTPLUS)

    @triton.jit
    def _program_setup(A_ptr, D_ptr, bias_ptr, Dm, Dg, N, L, nblk, n_chunks,
                       HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        """Indices, masks, offsets and per-channel parameters shared by the forward and
        backward. An offset is a scalar int64 base of the program (Bt * D * L may exceed 2**31
        at detection scale) plus an int32 offset inside its block (_config checks that they
        fit): per-element address arithmetic in 32 bits needs half the registers, part of
        what keeps ptxas from spilling in the backward (tests/ops/test_triton_compile.py)."""
        pid = tl.program_id(0)
        b = tl.program_id(1)
        g = pid // nblk
        blk = pid % nblk
        d0 = g * Dg + blk * BLOCK_D                            # first channel of the block
        dl = tl.arange(0, BLOCK_D)
        dmask = blk * BLOCK_D + dl < Dg
        offs_n = tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        dn_mask = dmask[:, None] & nmask[None, :]
        dn = dl[:, None] * N + offs_n[None, :]                 # into a block's (D, N) rows
        A = tl.load(A_ptr + d0 * N + dn, mask=dn_mask, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + d0 + dl, mask=dmask, other=0.0).to(tl.float32)
        else:
            Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d0 + dl, mask=dmask, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        bd0 = (b * Dm + d0).to(tl.int64)                       # first row of (Bt, D)
        row0 = bd0 * L                                         # into (Bt, D, L)
        bc0 = ((b * (Dm // Dg) + g) * N).to(tl.int64) * L      # into (Bt, G, N, L)
        # Chunk-state workspace (Bt, D, n_chunks, N): [b, d0 + i, k, n] = st0 + st + k * N.
        st0 = bd0 * n_chunks * N
        st = (dl * n_chunks)[:, None] * N + offs_n[None, :]
        offs_l = tl.arange(0, BLOCK_L)
        first = (offs_l == 0)[None, None, :]
        last = (offs_l == BLOCK_L - 1)[None, None, :]
        return (dmask, nmask, dn_mask, dn, A, Dv, bias, bd0, row0, bc0, st0, st, offs_l, first,
                last)

    @triton.jit
    def _load_chunk(k, u_ptr, delta_ptr, B_ptr, offs_l, dmask, nmask, bias, L,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        """Time indices, masks, int32 in-block offsets into (D, L) and (N, L) rows, and the
        fp32 u, delta, dt and B tiles of chunk k (pointers already at the program's base)."""
        t = k * BLOCK_L + offs_l
        lmask = t < L
        m_dl = dmask[:, None] & lmask[None, :]
        m_nl = nmask[:, None] & lmask[None, :]
        offs = (tl.arange(0, BLOCK_D) * L)[:, None] + t[None, :]
        offs_nl = (tl.arange(0, BLOCK_N) * L)[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=m_dl, other=0.0).to(tl.float32)
        v, dt = _load_dt(delta_ptr, offs, m_dl, bias, HAS_BIAS, SOFTPLUS)
        Bv = tl.load(B_ptr + offs_nl, mask=m_nl, other=0.0).to(tl.float32)
        return t, lmask, m_dl, m_nl, offs, offs_nl, u, v, dt, Bv

    @triton.jit
    def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, states_ptr,
                    Dm, Dg, N, L, nblk, n_chunks, n_iter,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    STORE_OUT: tl.constexpr, STORE_STATES: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        (dmask, nmask, dn_mask, dn, A, Dv, bias, bd0, row0, bc0, st0, st, offs_l, first,
         last) = _program_setup(A_ptr, D_ptr, bias_ptr, Dm, Dg, N, L, nblk, n_chunks,
                                HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, BLOCK_L)
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for k in range(n_iter):
            t, lmask, m_dl, m_nl, offs, offs_nl, u, _, dt, Bv = _load_chunk(
                k, u_ptr + row0, delta_ptr + row0, B_ptr + bc0, offs_l, dmask, nmask, bias, L,
                HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N, BLOCK_L)
            a = tl.exp(dt[:, None, :] * A[:, :, None])                 # (BD, BN, BL)
            x = (dt * u)[:, None, :] * Bv[None, :, :]
            x += tl.where(first, a * h[:, :, None], 0.0)
            _, hs = tl.associative_scan((a, x), 2, _combine)
            if STORE_OUT:
                Cv = tl.load(C_ptr + bc0 + offs_nl, mask=m_nl, other=0.0).to(tl.float32)
                y = tl.sum(tl.where(nmask[None, :, None], hs * Cv[None, :, :], 0.0), axis=1)
                if HAS_D:
                    y += Dv[:, None] * u
                tl.store(out_ptr + row0 + offs, y.to(out_ptr.dtype.element_ty), mask=m_dl)
            h = tl.sum(tl.where(last, hs, 0.0), axis=2)
            if STORE_STATES:
                tl.store(states_ptr + st0 + st + k * N, h, mask=dn_mask)

    @triton.jit
    def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dout_ptr, states_ptr,
                    du_ptr, ddelta_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbiasp_ptr,
                    Dm, Dg, N, L, nblk, n_chunks,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        (dmask, nmask, dn_mask, dn, A, Dv, bias, bd0, row0, bc0, st0, st, offs_l, first,
         last) = _program_setup(A_ptr, D_ptr, bias_ptr, Dm, Dg, N, L, nblk, n_chunks,
                                HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, BLOCK_L)
        # Partial dB / dC of this channel block: (Bt, G, nblk, N, L), block index g*nblk+blk.
        part0 = ((tl.program_id(1) * (Dm // Dg) * nblk + tl.program_id(0)) * N).to(tl.int64) * L
        g_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for kk in range(n_chunks):
            k = n_chunks - 1 - kk
            t, lmask, m_dl, m_nl, offs, offs_nl, u, v, dt, Bv = _load_chunk(
                k, u_ptr + row0, delta_ptr + row0, B_ptr + bc0, offs_l, dmask, nmask, bias, L,
                HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N, BLOCK_L)
            valid = dn_mask[:, :, None] & lmask[None, None, :]
            dy = tl.load(dout_ptr + row0 + offs, mask=m_dl, other=0.0).to(tl.float32)
            if HAS_D:
                dD_acc += tl.sum(tl.where(m_dl, dy * u, 0.0), axis=1)
            # Forward states of this chunk from its start state (h_{-1} = 0 for chunk 0). What
            # the adjoint pass needs of them (dC, a_t h_{t-1}) is taken here, so that h and x
            # are dead before it: fewer live tiles, no spill (tests/ops/test_triton_compile.py).
            h0 = tl.load(states_ptr + st0 + st + (k - 1) * N, mask=dn_mask & (k > 0), other=0.0)
            a = tl.exp(dt[:, None, :] * A[:, :, None])
            dtu = tl.where(m_dl, dt * u, 0.0)
            x = dtu[:, None, :] * Bv[None, :, :]
            _, hs = tl.associative_scan((a, x + tl.where(first, a * h0[:, :, None], 0.0)), 2,
                                        _combine)
            dCv = tl.sum(tl.where(valid, hs, 0.0) * dy[:, None, :], axis=0)   # (BN, BL)
            tl.store(dCp_ptr + part0 + offs_nl, dCv.to(dCp_ptr.dtype.element_ty), mask=m_nl)
            ah = tl.where(valid, hs - x, 0.0)                    # a_t h_{t-1}
            # Adjoint states g_t, reverse in time; a_{t+1} is zero past the end of the sequence.
            m_next = dmask[:, None] & (t + 1 < L)[None, :]
            _, dt_next = _load_dt(delta_ptr + row0, offs + 1, m_next, bias, HAS_BIAS, SOFTPLUS)
            a_next = tl.where(m_next[:, None, :], tl.exp(dt_next[:, None, :] * A[:, :, None]), 0.0)
            Cv = tl.load(C_ptr + bc0 + offs_nl, mask=m_nl, other=0.0).to(tl.float32)
            beta = dy[:, None, :] * Cv[None, :, :]
            beta += tl.where(last, a_next * g_carry[:, :, None], 0.0)
            _, gs = tl.associative_scan((a_next, beta), 2, _combine, reverse=True)
            gs = tl.where(valid, gs, 0.0)
            g_carry = tl.sum(tl.where(first, gs, 0.0), axis=2)
            dBv = tl.sum(gs * dtu[:, None, :], axis=0)           # (BN, BL)
            tl.store(dBp_ptr + part0 + offs_nl, dBv.to(dBp_ptr.dtype.element_ty), mask=m_nl)
            gB = tl.sum(gs * Bv[None, :, :], axis=1)             # (BD, BL)
            du = dt * gB
            if HAS_D:
                du += Dv[:, None] * dy
            tl.store(du_ptr + row0 + offs, du.to(du_ptr.dtype.element_ty), mask=m_dl)
            gah = gs * ah
            ddt = u * gB + tl.sum(gah * A[:, :, None], axis=1)
            dA_acc += tl.sum(gah * dt[:, None, :], axis=2)
            if SOFTPLUS:
                ddt = ddt * tl.where(v > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-v)))
            if HAS_BIAS:
                dbias_acc += tl.sum(tl.where(m_dl, ddt, 0.0), axis=1)
            tl.store(ddelta_ptr + row0 + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dl)
        tl.store(dAp_ptr + bd0 * N + dn, dA_acc, mask=dn_mask)
        dl = tl.arange(0, BLOCK_D)
        if HAS_D:
            tl.store(dDp_ptr + bd0 + dl, dD_acc, mask=dmask)
        if HAS_BIAS:
            tl.store(dbiasp_ptr + bd0 + dl, dbias_acc, mask=dmask)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: Optional[int]) -> int:
    return torch.cuda.get_device_properties(
        torch.cuda.current_device() if index is None else index).multi_processor_count


def _config(batch: int, groups: int, dg: int, nstate: int, length: int, device: torch.device,
            tile: int, block_l: Optional[int] = None, block_d: Optional[int] = None):
    """Pick (BLOCK_D, BLOCK_N, BLOCK_L, num_warps).

    BLOCK_D: as many channels as possible (up to _MAX_BLOCK_D: B/C tiles are shared by the
    block, and in the backward each block writes one partial dB/dC row) while keeping at
    least _PROGRAMS_PER_SM programs per SM, since each program is a serial walk over L.
    BLOCK_L: the rest of a ``tile``-element register tile (halved when BLOCK_D > 2, which
    ptxas showed to need more registers per element), at most the padded sequence."""
    bn = _next_pow2(nstate)
    if block_d is None:
        block_d = min(_next_pow2(dg), _MAX_BLOCK_D)
        if device.type == 'cuda':
            target = _PROGRAMS_PER_SM * _sm_count(device.index)
            while block_d > 1 and batch * groups * triton.cdiv(dg, block_d) < target:
                block_d //= 2
        while block_d > 1 and block_d * bn * _MIN_BLOCK_L > tile // 2:
            block_d //= 2
    if block_l is None:
        elems = tile if block_d <= 2 else tile // 2
        block_l = min(max(_next_pow2(length), _MIN_BLOCK_L),
                      max(_MIN_BLOCK_L, elems // (bn * block_d)))
    # Offsets inside a program's block are int32 (_program_setup): its (D, L) and (N, L) rows,
    # one chunk past the end, and its chunk states must span fewer than 2**31 elements.
    span = max(max(block_d, bn) * (length + block_l),
               block_d * bn * triton.cdiv(length, block_l))
    if span >= 2 ** 31:
        raise ValueError(
            f'sequence length {length} is too long for the triton selective scan (its blocks '
            f'of {block_d} channels x {bn} states span {span} elements, int32 offsets allow '
            f'{2 ** 31 - 1}); use another backend or split the sequence')
    return block_d, bn, block_l, 4 if bn <= 4 else 8


def _prepare(u, delta, A, B, C, D, delta_bias):
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    batch, dim, length = u.shape
    groups, nstate = B.shape[1], B.shape[2]
    if dim % groups:
        raise ValueError(f'channels ({dim}) must be divisible by groups ({groups})')
    return u, delta, A, B, C, D, delta_bias, batch, dim, length, groups, nstate


def _device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch_states_or_out(u, delta, A, B, C, D, delta_bias, delta_softplus, out, states, cfg,
                          store_out: bool):
    """Run the forward kernel: write ``out`` (store_out) or the chunk-end states."""
    batch, dim, length = u.shape
    groups, nstate = B.shape[1], B.shape[2]
    dg = dim // groups
    block_d, block_n, block_l, num_warps = cfg
    nblk = triton.cdiv(dg, block_d)
    n_chunks = triton.cdiv(length, block_l)
    n_iter = n_chunks if store_out else n_chunks - 1
    if n_iter <= 0:
        return
    dummy = A
    _fwd_kernel[(groups * nblk, batch)](
        u, delta, A, B, C, dummy if D is None else D, dummy if delta_bias is None else delta_bias,
        dummy if out is None else out, dummy if states is None else states,
        dim, dg, nstate, length, nblk, n_chunks, n_iter,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        STORE_OUT=store_out, STORE_STATES=not store_out,
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, num_warps=num_warps)


def _fwd(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, out_float=False,
         block_l=None, block_d=None):
    """fwd with optional block-size overrides (tests use small chunks to exercise the carry)."""
    (u, delta, A, B, C, D, delta_bias, batch, dim, length, groups,
     nstate) = _prepare(u, delta, A, B, C, D, delta_bias)
    out = torch.empty(u.shape, dtype=torch.float32 if out_float else u.dtype, device=u.device)
    if out.numel() == 0:
        return out
    cfg = _config(batch, groups, dim // groups, nstate, length, u.device, _FWD_TILE, block_l,
                  block_d)
    with _device_guard(u):
        _launch_states_or_out(u, delta, A, B, C, D, delta_bias, delta_softplus, out, None, cfg,
                              True)
    return out


def _bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus=False,
         block_l=None, block_d=None):
    """bwd with optional block-size overrides."""
    (u, delta, A, B, C, D, delta_bias, batch, dim, length, groups,
     nstate) = _prepare(u, delta, A, B, C, D, delta_bias)
    dout = dout.contiguous()
    dev = u.device
    f32 = torch.float32
    if u.numel() == 0 or nstate == 0:
        def zeros(shape):
            return torch.zeros(shape, dtype=f32, device=dev)

        return (torch.zeros_like(u), torch.zeros_like(delta), zeros(A.shape),
                torch.zeros_like(B), torch.zeros_like(C), None if D is None else zeros(dim),
                None if delta_bias is None else zeros(dim))
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dg = dim // groups
    cfg = _config(batch, groups, dg, nstate, length, dev, _BWD_TILE, block_l, block_d)
    block_d, block_n, block_l, num_warps = cfg
    nblk = triton.cdiv(dg, block_d)
    n_chunks = triton.cdiv(length, block_l)

    states = torch.empty((batch, dim, n_chunks, nstate), dtype=f32, device=dev)
    # With one channel block per group the partial sums are the result: write them directly.
    part_dtype = B.dtype if nblk == 1 else f32
    dB_part = torch.empty((batch, groups, nblk, nstate, length), dtype=part_dtype, device=dev)
    dC_part = torch.empty_like(dB_part)
    dA_part = torch.empty((batch, dim, nstate), dtype=f32, device=dev)
    dD_part = torch.empty((batch, dim), dtype=f32, device=dev)
    dbias_part = torch.empty((batch, dim), dtype=f32, device=dev)
    with _device_guard(u):
        _launch_states_or_out(u, delta, A, B, C, D, delta_bias, delta_softplus, None, states,
                              cfg, False)
        _bwd_kernel[(groups * nblk, batch)](
            u, delta, A, B, C, A if D is None else D, A if delta_bias is None else delta_bias,
            dout, states, du, ddelta, dB_part, dC_part, dA_part, dD_part, dbias_part,
            dim, dg, nstate, length, nblk, n_chunks,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, num_warps=num_warps)

    def reduce_part(p: torch.Tensor) -> torch.Tensor:
        return p.squeeze(2) if nblk == 1 else p.sum(2).to(B.dtype)

    dA = dA_part.sum(0)
    dD = None if D is None else dD_part.sum(0)
    dbias = None if delta_bias is None else dbias_part.sum(0)
    return du, ddelta, dA, reduce_part(dB_part), reduce_part(dC_part), dD, dbias


def fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
        C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
        delta_softplus: bool, out_float: bool) -> torch.Tensor:
    """Selective-scan forward on Triton. Returns out (Bt, D, L) in u's dtype (fp32 if
    ``out_float``); all arithmetic in fp32."""
    return _fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)


def bwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
        C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
        dout: torch.Tensor, delta_softplus: bool
        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                   Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Selective-scan backward on Triton, recomputing the forward states from the inputs.
    Returns (du, ddelta, dA, dB, dC, dD or None, ddelta_bias or None); du/ddelta/dB/dC in the
    input dtype, dA/dD/ddelta_bias in fp32."""
    return _bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus)
