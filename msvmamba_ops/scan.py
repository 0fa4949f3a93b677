"""Public selective scan: input validation, backend dispatch, torch.library ops, autograd.

The ops ``msvmamba::selective_scan_fwd`` and ``msvmamba::selective_scan_bwd`` are
``torch.library`` custom ops with fake (meta) implementations, so ``torch.compile`` treats the
scan as one opaque node (no graph break) and ``torch.library.opcheck`` passes. The backend is a
plain string argument of both ops; the forward op's autograd formula calls the backward op
with the same backend.

Backends are the modules of :data:`REGISTRY`, each with the protocol of
:mod:`msvmamba_ops.backend` (``SUPPORT``, ``unavailable_reason``, ``fwd``, ``bwd``); the
dispatch below only reads the registry and those members.
"""
import importlib
import os
import warnings
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .backend import ALL_DTYPES
from .graph_mode import exporting, recording_graph


class Registered(NamedTuple):
    """A registry entry: the backend's module and the device types for which the automatic
    choice tries it (``'*'``: every device type that no entry names)."""
    module: str
    auto: Tuple[str, ...] = ()


# The backends by name. The automatic choice tries, in this order, the entries whose
# ``auto`` holds the tensors' device type (fastest first) and takes the first that takes
# the dtype and is available; 'reference' (any device, any dtype) is the last resort.
REGISTRY = {
    'cuda': Registered('msvmamba_ops.cuda_scan', auto=('cuda', )),
    'triton': Registered('msvmamba_ops.triton_scan', auto=('cuda', )),
    'cpu': Registered('msvmamba_ops.cpu_scan', auto=('cpu', )),
    # devices with no compiled kernel at all (MPS, XPU, ...): the parallel plain-op scan
    'chunked': Registered('msvmamba_ops.chunked_scan', auto=('*', )),
    'reference': Registered('msvmamba_ops.reference', auto=('cpu', 'cuda', '*')),
}
BACKENDS = tuple(REGISTRY)  # the names, for users and test parametrisation
# What exporters (torch.export, ONNX) record, whatever backend was asked for: an inline one.
EXPORT_BACKEND = 'chunked'
ENV_BACKEND = 'MSVMAMBA_SCAN_BACKEND'
SETUP_HINT = 'run `bash tools/setup.sh` (or `python -m msvmamba_ops.build`)'
_warned = set()
_modules = {}  # module path -> imported backend module


# ---------------------------------------------------------------------------------------
# Backend selection

def backend_module(name: str):
    """The module of backend ``name`` (it has the members of
    :class:`msvmamba_ops.backend.ScanBackend`)."""
    if name not in REGISTRY:
        raise ValueError(f'selective_scan: unknown backend {name!r}; choose one of '
                         f"{', '.join(repr(b) for b in REGISTRY)}")
    path = REGISTRY[name].module
    # A dict lookup after the first import: what torch.compile traces in selective_scan.
    if path not in _modules:
        _modules[path] = importlib.import_module(path)
    return _modules[path]


def backend_unavailable_reason(name: str, device_type: str, dtype: torch.dtype = torch.float32,
                               build: bool = False) -> Optional[str]:
    """None if backend ``name`` can run on ``device_type`` tensors of ``dtype`` here, else
    the reason. ``build`` lets a compiled backend compile its extension when it is not
    cached yet."""
    return backend_module(name).unavailable_reason(device_type, dtype, build=build)


def _auto_candidates(device_type: str):
    """The backends the automatic choice tries on ``device_type`` tensors, in order."""
    named = any(device_type in entry.auto for entry in REGISTRY.values())
    key = device_type if named else '*'
    return [name for name, entry in REGISTRY.items() if key in entry.auto]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def resolve_backend(device_type: str, dtype: torch.dtype = torch.float32,
                    backend: Optional[str] = None) -> str:
    """The backend a call on ``device_type`` tensors of ``dtype`` uses.

    ``backend`` (per call) wins over the environment variable ``MSVMAMBA_SCAN_BACKEND``;
    both accept 'auto' (default) or a name of :data:`BACKENDS`: 'cuda', 'triton', 'cpu',
    'chunked' (the parallel plain-op scan of ``chunked_scan.py``: any device, and what
    export records) or 'reference'. An explicit backend that cannot run raises. 'auto'
    goes down :data:`REGISTRY`: CPU -> cpu extension, else reference; CUDA -> cuda
    extension, else triton, else reference (float64 on CUDA: reference); other devices
    (MPS, XPU, ...) -> chunked. When a faster backend is missing it warns once per
    process, saying how to get it.
    """
    source = 'backend=' if backend is not None else ENV_BACKEND
    name = (backend if backend is not None else os.environ.get(ENV_BACKEND) or 'auto')
    name = str(name).strip().lower()
    if name not in REGISTRY and name != 'auto':
        raise ValueError(f'selective_scan: unknown backend {name!r} (from {source}); choose '
                         f"one of 'auto', {', '.join(repr(b) for b in REGISTRY)}")
    if name != 'auto':
        support = backend_module(name).SUPPORT
        if dtype not in support.dtypes:
            takes = tuple(b for b in REGISTRY if dtype in backend_module(b).SUPPORT.dtypes)
            raise TypeError(f'selective_scan: backend {name!r} does not support '
                            f'{str(dtype).replace("torch.", "")} inputs; use one of {takes}')
        reason = backend_unavailable_reason(name, device_type, dtype, build=True)
        if reason is not None:
            raise RuntimeError(f'selective_scan: backend {name!r} (from {source}) cannot run on '
                               f'{device_type} tensors: {reason}')
        return name
    missing = []
    for cand in _auto_candidates(device_type):
        if dtype not in backend_module(cand).SUPPORT.dtypes:
            continue  # not a missing kernel: it never takes this dtype
        reason = backend_unavailable_reason(cand, device_type, dtype)
        if reason is None:
            break
        missing.append(f'{cand}: {reason}')
    else:  # pragma: no cover - 'reference' runs everywhere
        raise RuntimeError(f'selective_scan: no backend can run on {device_type} tensors of '
                           f'{dtype} ({"; ".join(missing)})')
    if missing:
        _warn_once(device_type, (
            f'msvmamba_ops.selective_scan: the fast {device_type} kernel is missing '
            f"({'; '.join(missing)}); using the {cand!r} backend, which is slower. To get it, "
            f'{SETUP_HINT}. (This warning is shown once.)'))
    return cand


# Imported now: a strict exporter traces selective_scan and cannot trace an import. (The
# other backends are imported by resolve_backend, which runs untraced.)
backend_module(EXPORT_BACKEND)


@torch.compiler.assume_constant_result
def _resolve_constant(device_type: str, is_fp64: bool, backend: Optional[str]) -> str:
    # Run once while torch.compile traces; the result is baked into the graph.
    return resolve_backend(device_type, torch.float64 if is_fp64 else torch.float32, backend)


# ---------------------------------------------------------------------------------------
# The torch.library ops

def out_dtype(dtype: torch.dtype, out_float: bool) -> torch.dtype:
    """Output dtype: the input dtype, or float32 for fp16/bf16 inputs when ``out_float``."""
    return torch.float32 if out_float and dtype in (torch.float16, torch.bfloat16) else dtype


def _own(outs, inputs):
    """Outputs as fresh contiguous tensors (custom ops must not return aliases of inputs or
    of each other)."""
    taken = {t.untyped_storage().data_ptr() for t in inputs
             if isinstance(t, Tensor) and t.numel() > 0}
    result = []
    for o in outs:
        o = o.contiguous()
        if o.numel() > 0:
            ptr = o.untyped_storage().data_ptr()
            if ptr in taken:
                o = o.clone()
                ptr = o.untyped_storage().data_ptr()
            taken.add(ptr)
        result.append(o)
    return result


def check_output_range(out: Tensor, inputs, backend: str) -> Tensor:
    """``out``, unless a float16/bfloat16 output holds inf from finite inputs: the float32
    accumulators held a value beyond the dtype's range (float16: 65504, e.g. a large dt
    times B u over a long scan), and rounding it made inf. That is refused (OverflowError)
    rather than handed on as inf/nan. Only reduced-precision outputs are checked (one
    reduction and, on a GPU, one sync; none while a CUDA graph is captured), and the inputs
    only when an inf is found."""
    if out.dtype not in (torch.float16, torch.bfloat16) or (
            out.is_cuda and torch.cuda.is_current_stream_capturing()):  # no sync in a graph
        return out
    if not torch.isinf(out).any():
        return out
    if not all(torch.isfinite(t).all() for t in inputs if t is not None):
        return out  # inf/nan in, inf/nan out: not the output dtype's doing
    name = str(out.dtype).replace('torch.', '')
    raise OverflowError(
        f'selective_scan ({backend} backend): the output overflows {name} (its largest value '
        f'is {torch.finfo(out.dtype).max:.6g}) although every input is finite; pass '
        'out_float=True for a float32 output'
        + (', or use bfloat16 inputs (float32\'s range)' if out.dtype == torch.float16 else ''))


@torch.library.custom_op('msvmamba::selective_scan_fwd', mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       out_float: bool, backend: str) -> Tensor:
    out = backend_module(backend).fwd(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                       out_float)
    out = out.to(out_dtype(u.dtype, out_float))
    check_output_range(out, (u, delta, A, B, C, D, delta_bias), backend)
    return _own([out], [u, delta, A, B, C, D, delta_bias])[0]


@selective_scan_fwd.register_fake
def _selective_scan_fwd_fake(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float,
                             backend):
    return torch.empty_like(u, dtype=out_dtype(u.dtype, out_float),
                            memory_format=torch.contiguous_format)


@torch.library.custom_op('msvmamba::selective_scan_bwd', mutates_args=())
def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], delta_bias: Optional[Tensor], dout: Tensor,
                       delta_softplus: bool, backend: str
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias); dD / ddelta_bias are zeros when
    D / delta_bias is None (the autograd formula drops them)."""
    du, ddelta, dA, dB, dC, dD, dbias = backend_module(backend).bwd(
        u, delta, A, B, C, D, delta_bias, dout, delta_softplus)
    dim = A.shape[0]
    dD = A.new_zeros(dim) if dD is None else dD
    dbias = A.new_zeros(dim) if dbias is None else dbias
    outs = [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype),
            dC.to(C.dtype), dD.to(A.dtype), dbias.to(A.dtype)]
    return tuple(_own(outs, [u, delta, A, B, C, D, delta_bias, dout]))


@selective_scan_bwd.register_fake
def _selective_scan_bwd_fake(u, delta, A, B, C, D, delta_bias, dout, delta_softplus, backend):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format)
    dim = A.shape[0]
    return (like(u), like(delta), like(A), like(B), like(C), A.new_empty(dim),
            A.new_empty(dim))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, out_float, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend


def _backward(ctx, dout):
    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dbias = torch.ops.msvmamba.selective_scan_bwd(
        u, delta, A, B, C, D, delta_bias, dout.contiguous(), ctx.delta_softplus, ctx.backend)
    return (du, ddelta, dA, dB, dC, None if D is None else dD,
            None if delta_bias is None else dbias, None, None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------
# Validation and the public function

def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _check(ok: bool, message: str, exc=ValueError) -> None:
    if not ok:
        raise exc(f'selective_scan: {message}')


def _normalize(u, delta, A, B, C, D, delta_bias):
    """Check shapes/dtypes/devices (errors name the argument and the expected shape) and
    return contiguous inputs with B, C as (Bt, G, N, L) and A, D, delta_bias in the
    accumulation dtype (float32; float64 for float64 inputs)."""
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    for name, t in named.items():
        _check(t is None and name in ('D', 'delta_bias') or isinstance(t, Tensor),
               f'{name} must be a torch.Tensor, got {type(t).__name__}', TypeError)
    _check(u.dim() == 3, f'u must have shape (Bt, D, L), got {_shape(u)}')
    bt, dim, length = u.shape
    _check(_shape(delta) == _shape(u),
           f'delta must have shape (Bt, D, L) = {_shape(u)} like u, got {_shape(delta)}')
    _check(A.dim() == 2 and A.shape[0] == dim,
           f'A must have shape (D, N) = ({dim}, N), got {_shape(A)}')
    nstate = A.shape[1]
    bc = {}
    for name, t in (('B', B), ('C', C)):
        ok4 = (t.dim() == 4 and t.shape[0] == bt and t.shape[2] == nstate
               and t.shape[3] == length and t.shape[1] > 0 and dim % t.shape[1] == 0)
        ok3 = t.dim() == 3 and _shape(t) == (bt, nstate, length)
        _check(ok4 or ok3, (
            f'{name} must have shape (Bt, G, N, L) = ({bt}, G, {nstate}, {length}) with G '
            f'dividing D={dim}, or (Bt, N, L) = ({bt}, {nstate}, {length}), got {_shape(t)}'))
        bc[name] = t.unsqueeze(1) if ok3 else t
    _check(_shape(bc['B']) == _shape(bc['C']),
           f'B and C must have the same groups G, got B {_shape(B)} and C {_shape(C)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        _check(t is None or _shape(t) == (dim,), f'{name} must have shape (D,) = ({dim},), '
               f'got {None if t is None else _shape(t)}')
    dtypes = {name: named[name].dtype for name in ('u', 'delta', 'B', 'C')}
    _check(u.dtype in ALL_DTYPES and len(set(dtypes.values())) == 1,
           'u, delta, B and C must share one dtype among float32, float16, bfloat16, float64; '
           'got ' + ', '.join(f'{k} {str(v).replace("torch.", "")}' for k, v in dtypes.items()),
           TypeError)
    for name, t in named.items():
        if t is None:
            continue
        _check(t.is_floating_point(), f'{name} must be a floating-point tensor, got {t.dtype}',
               TypeError)
        _check(t.device == u.device,
               f'{name} is on {t.device} but u is on {u.device}: all inputs must share a device')
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32

    def to_acc(t):
        return None if t is None else t.to(acc).contiguous()
    return (u.contiguous(), delta.contiguous(), to_acc(A), bc['B'].contiguous(),
            bc['C'].contiguous(), to_acc(D), to_acc(delta_bias))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, out_float: bool = False,
                   backend: Optional[str] = None) -> Tensor:
    """Selective scan (S6) with autograd, dispatched to the fastest available backend.

    For batch b, channel d (group g = d // (D / G)), state n and time t, with h_{-1} = 0::

        dt[b,d,t]  = softplus(delta + delta_bias[d]) if delta_softplus else delta + delta_bias[d]
        h[b,d,n,t] = exp(dt * A[d,n]) * h[b,d,n,t-1] + dt * B[b,g,n,t] * u[b,d,t]
        y[b,d,t]   = sum_n C[b,g,n,t] * h[b,d,n,t] + D[d] * u[b,d,t]

    (softplus is log1p(exp(v)) for v <= 20, v above).

    Args:
        u, delta: (Bt, D, L).
        A: (D, N), real (MSVMamba passes -exp(A_log)).
        B, C: (Bt, G, N, L) with D % G == 0, or (Bt, N, L) for G = 1. Any N and G; N = G = 1
            (MSVMamba's only case) has a specialised fast path in the compiled kernels.
        D, delta_bias: (D,) or None.
        delta_softplus: apply softplus to delta + delta_bias.
        out_float: return float32 even for float16/bfloat16 inputs.
        backend: 'auto' / None (default: env ``MSVMAMBA_SCAN_BACKEND``, else automatic),
            'cuda', 'triton', 'cpu', 'chunked' or 'reference'; see :func:`resolve_backend`.
            Under ``torch.export`` / ONNX export the chunked scan is used whatever is asked.

    Dtype policy:
        u, delta, B and C share one dtype: float32, float16, bfloat16 (or float64, on the
        'cpu', 'chunked' and 'reference' backends only: each backend's ``SUPPORT.dtypes``).
        A, D and delta_bias are cast to float32 (float64 for float64 inputs). All
        arithmetic (dt, the states h, the sums) is accumulated in float32 (float64 for
        float64 inputs). The output has the input dtype,
        or float32 when ``out_float`` (fp16/bf16 inputs). Gradients: du, ddelta, dB, dC in
        the dtype of their input, dA, dD, ddelta_bias in A's accumulation dtype (cast back
        to the caller's dtype by autograd), all accumulated in float32/float64.
        fp16/bf16 results therefore differ from a float32 run on the same (rounded) inputs
        only by the rounding of the results: the tests bound the largest error, relative
        to the largest magnitude, per backend and dtype by ``msvmamba_ops.testing.
        TOLERANCES`` (e.g. 2e-3 for fp16, 1e-2 for bf16 on the cpu backend), for the
        output and every gradient.

    Returns:
        y: (Bt, D, L).

    Raises ValueError / TypeError naming the argument and the expected shape or dtype,
    RuntimeError when an explicitly requested backend cannot run, and OverflowError when a
    float16/bfloat16 output from finite inputs would be inf (:func:`check_output_range`;
    ``out_float=True`` avoids it).
    """
    if torch.jit.is_tracing():  # e.g. mmengine's FLOP counter: sizes are traced values
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            u, delta, A, B, C, D, delta_bias = _normalize(u, delta, A, B, C, D, delta_bias)
    else:
        u, delta, A, B, C, D, delta_bias = _normalize(u, delta, A, B, C, D, delta_bias)
    if exporting():
        # Exported graphs get standard ops only (ONNX, torch.export): the inline backend.
        name = EXPORT_BACKEND
    else:
        name = _resolve_constant(u.device.type, u.dtype == torch.float64, backend)
    module = backend_module(name)
    if module.SUPPORT.inline:
        # Plain ops, not the opaque custom op: torch.compile traces them and Inductor fuses
        # them; the compiled backends stay one opaque node (their kernel is one pass).
        out = module.scan(u, delta, A, B, C, D, delta_bias, bool(delta_softplus),
                          bool(out_float))
        if not recording_graph():  # a data-dependent check: eager runs only
            check_output_range(out, (u, delta, A, B, C, D, delta_bias), name)
        return out
    return torch.ops.msvmamba.selective_scan_fwd(u, delta, A, B, C, D, delta_bias,
                                                 bool(delta_softplus), bool(out_float), name)
