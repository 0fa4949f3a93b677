"""Test support for the selective scan: inputs, the float64 oracle and the tolerances.

The one place the tests (``tests/ops``), ``tools/analysis_tools/benchmark_scan.py`` and
``tools/analysis_tools/gpu_check.py`` take scan inputs and accuracy bounds from, so that a
backend is held to the same bound wherever it is checked.

* :func:`make_inputs`: random inputs shaped and scaled like the model's (dt mostly in
  0.001..0.1, A = -exp(log(1..N) + noise), u, B, C, D ~ N(0, 1)), rounded to the dtype
  under test.
* :func:`oracle`: output and autograd gradients of :func:`selective_scan_ref` in float64 on
  the (already rounded) inputs, so only the backend's own rounding is measured.
* :data:`TOLERANCES` / :func:`tolerance`: per backend and result dtype, the largest allowed
  ``max |result - oracle| / max |oracle|``, for the output and every gradient alike.
* :class:`ScanCase`, :func:`check_backend`, :func:`passes`: a backend module's ``fwd`` /
  ``bwd`` against the oracle, per tensor (used where a whole list of cases is reported).

Imports only torch (pytest only inside :func:`require_backend`).
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .reference import selective_scan_ref
from .scan import backend_module, backend_unavailable_reason

ARG_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
GRAD_NAMES = tuple('d' + name for name in ARG_NAMES)
DTYPES = {'fp64': torch.float64, 'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
# Tensors in the accumulation dtype (float32, float64 for float64 inputs) whatever the input
# dtype: A, D, delta_bias and their gradients.
ACC_ARGS = ('A', 'D', 'delta_bias')

# max |result - float64 oracle| / max |oracle|, per backend and dtype of the result, for the
# output and every gradient. fp16/bf16 results are rounded once from fp32 accumulators (the
# rounding alone is up to 2^-11 and 2^-8 of a value). Measured on the tests' inputs (CPU,
# 2026-11-30): reference and cpu fp32 1.1e-6 (L <= 1300), 1.9e-5 at L = 67,000 (dD and
# ddelta_bias sum 134,000 terms in fp32 one after another), fp16 4.5e-4, bf16 4.0e-3.
_ACCUMULATING_FP32 = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
TOLERANCES: Dict[str, Dict[torch.dtype, float]] = {
    'reference': {torch.float64: 1e-12, **_ACCUMULATING_FP32, torch.float32: 5e-5},
    'cpu': {torch.float64: 1e-12, **_ACCUMULATING_FP32, torch.float32: 5e-5},
    'cuda': dict(_ACCUMULATING_FP32),
    # Triton scans blocks of the sequence in parallel and combines their carries in another
    # order than the sequential loop, so fp32 results move further from it.
    'triton': {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2},
    # Parallel plain-op scan (chunked_scan.py): decays below e^-18 (float64: e^-40) are
    # floored there, below the dtype's resolution; measured fp32 <= 1.6e-6 (L <= 67,000,
    # decays near 0 and near 1), float64 5e-16.
    'chunked': {torch.float64: 1e-12, **_ACCUMULATING_FP32},
}


def tolerance(backend: str, dtype: torch.dtype) -> float:
    """The bound of :data:`TOLERANCES` for ``backend`` and a result of ``dtype``."""
    try:
        return TOLERANCES[backend][dtype]
    except KeyError:
        raise KeyError(f'no tolerance for backend {backend!r} and {dtype}; add it to '
                       'msvmamba_ops.testing.TOLERANCES') from None


# ---------------------------------------------------------------------------- inputs

def make_inputs(bt: int = 2, dim: int = 4, length: int = 16, nstate: int = 1,
                groups: int = 1, *, dtype: torch.dtype = torch.float32, softplus: bool = True,
                with_D: bool = True, with_bias: bool = True, device='cpu',
                seed: int = 0) -> Dict[str, Optional[torch.Tensor]]:
    """Inputs of ``selective_scan`` as a dict of :data:`ARG_NAMES` (D / delta_bias None when
    left out), scaled like the model's: dt = softplus(delta + delta_bias) (or delta +
    delta_bias) mostly in 0.001..0.1, A = -exp(log(1..N) + noise), u, B, C, D ~ N(0, 1).
    u, delta, B, C have ``dtype``; A, D, delta_bias stay float32 for fp16/bf16 (the
    documented dtype policy)."""
    # Generated on the device (large GPU timing inputs stay quick), in float32 (float64 for
    # float64 inputs): rounding to the tested dtype comes after.
    gen = torch.Generator(device=device).manual_seed(seed)
    gen_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, scale=1.0, uniform=False):
        fn = torch.rand if uniform else torch.randn
        return fn(*shape, generator=gen, dtype=gen_dtype, device=device) * scale

    dt0 = torch.exp(rnd(dim, uniform=True) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    if softplus:  # delta_bias = softplus^-1(dt0), delta a perturbation around 0
        delta, bias = rnd(bt, dim, length, scale=0.5), dt0 + torch.log(-torch.expm1(-dt0))
    else:  # dt = delta + delta_bias itself: keep it positive
        delta, bias = rnd(bt, dim, length, scale=0.1, uniform=True), dt0
    A_log = torch.log(torch.arange(1, nstate + 1, dtype=gen_dtype, device=device))
    A = -torch.exp(A_log.repeat(dim, 1) + rnd(dim, nstate, scale=0.1))
    args = dict(u=rnd(bt, dim, length), delta=delta, A=A,
                B=rnd(bt, groups, nstate, length), C=rnd(bt, groups, nstate, length),
                D=rnd(dim) if with_D else None, delta_bias=bias if with_bias else None)
    low = dtype in (torch.float16, torch.bfloat16)
    return {k: None if v is None else v.to(torch.float32 if low and k in ACC_ARGS else dtype)
            for k, v in args.items()}


def make_dout(like: torch.Tensor, dtype: Optional[torch.dtype] = None,
              seed: int = 1) -> torch.Tensor:
    """A random incoming gradient shaped like ``like``, N(0, 1), on its device."""
    gen = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(like.shape, generator=gen, device=like.device,
                       dtype=torch.float64 if like.dtype == torch.float64 else torch.float32
                       ).to(dtype or like.dtype)


# ---------------------------------------------------------------------------- the oracle

def grads_of(fn, args: Dict, softplus: bool, dout: Optional[torch.Tensor] = None,
             **kwargs) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]], torch.Tensor]:
    """``(y, grads, dout)`` of ``fn(**args, delta_softplus=softplus, **kwargs)`` under
    autograd; grads in :data:`ARG_NAMES` order, None where the argument is None."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in args.items()}
    y = fn(**leaves, delta_softplus=softplus, **kwargs)
    dout = make_dout(y) if dout is None else dout
    y.backward(dout)
    return y.detach(), [None if leaves[k] is None else leaves[k].grad for k in ARG_NAMES], dout


def oracle(args: Dict, softplus: bool, dout: Optional[torch.Tensor] = None):
    """float64 autograd through :func:`selective_scan_ref` on the CPU, from the inputs
    upcast to float64: ``(y, grads, dout)`` as :func:`grads_of`."""
    args64 = {k: None if v is None else v.detach().double().cpu() for k, v in args.items()}
    return grads_of(selective_scan_ref, args64, softplus,
                    None if dout is None else dout.detach().double().cpu())


def rel_error(got: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> float:
    """max |got - ref| / max |ref|; inf for a missing, extra, misshaped or non-finite
    result; 0 when both are None or empty."""
    if got is None or ref is None:
        return 0.0 if got is None and ref is None else math.inf
    if tuple(got.shape) != tuple(ref.shape):
        return math.inf
    if got.numel() == 0:
        return 0.0
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    return err / scale if scale > 0 else err


def assert_close(got: Optional[torch.Tensor], ref: Optional[torch.Tensor], tol: float,
                 what: str = '') -> None:
    """Fail unless :func:`rel_error` of ``got`` against ``ref`` is at most ``tol``."""
    err = rel_error(got, ref)
    assert err <= tol, (f'{what}: max |error| / max |reference| = {err:.3g} > {tol:g}'
                        + ('' if got is None or ref is None else
                           f' (shapes {tuple(got.shape)} / {tuple(ref.shape)})'))


def assert_results_close(y, grads, y_ref, g_ref, tol: float) -> None:
    """:func:`assert_close` for the output and each gradient (:data:`ARG_NAMES` order)."""
    for name, got, ref in zip(('out', ) + GRAD_NAMES, [y, *grads], [y_ref, *g_ref]):
        assert_close(got, ref, tol, name)


# ---------------------------------------------------------------------------- cases

@dataclasses.dataclass
class ScanCase:
    """One correctness case: sizes, dtype ('fp32', 'fp16', 'bf16') and flags.
    ``out_float`` asks for a float32 output, ``dout_float`` passes a float32 dout."""
    name: str
    batch: int
    dim: int
    groups: int
    nstate: int
    length: int
    dtype: str = 'fp32'
    softplus: bool = True
    out_float: bool = False
    dout_float: bool = False
    with_D: bool = True
    with_bias: bool = True

    @property
    def shape(self) -> str:
        return f'{self.batch},{self.dim},{self.groups},{self.nstate},{self.length}'

    def flags(self) -> str:
        names = [('softplus', self.softplus), ('out_float', self.out_float),
                 ('dout_fp32', self.dout_float), ('no D', not self.with_D),
                 ('no bias', not self.with_bias)]
        return ', '.join(n for n, on in names if on)

    def inputs(self, device='cpu', seed: int = 0) -> Tuple[Dict, torch.Tensor]:
        """``(args, dout)`` for this case (see :func:`make_inputs`)."""
        dtype = DTYPES[self.dtype]
        args = make_inputs(self.batch, self.dim, self.length, self.nstate, self.groups,
                           dtype=dtype, softplus=self.softplus, with_D=self.with_D,
                           with_bias=self.with_bias, device=device, seed=seed)
        dout_dtype = torch.float32 if self.out_float or self.dout_float else dtype
        return args, make_dout(args['u'], dout_dtype, seed + 1)


def cases(specs: Sequence[tuple]) -> List[ScanCase]:
    """One case per dtype of each ``(name, (batch, dim, groups, nstate, length), dtypes,
    flags)`` spec; flag ``oflex``: float32 output and dout for fp16/bf16."""
    out = []
    for name, sizes, dtypes, kwargs in specs:
        for dt in dtypes:
            extra = dict(kwargs)
            oflex = extra.pop('oflex', False) and dt != 'fp32'
            out.append(ScanCase(name, *sizes, dtype=dt, out_float=oflex, dout_float=oflex,
                                **extra))
    return out


# The cases every GPU backend is checked on (tools/analysis_tools/gpu_check.py, the GPU tests).
# Sizes exercise: several rows per warp (short L), multi-chunk rows, multi-warp teams (few
# rows, long L), general N with groups, odd channels per group, L not a multiple of 8. The
# long-L oracles take seconds each (a Python loop over L), hence fewer dtypes there.
GPU_DTYPES = ('fp32', 'bf16', 'fp16')
GPU_CASES = cases([
    ('n1 stage-3 L', (4, 96, 1, 1, 49), GPU_DTYPES, {}),
    ('n1 stage-0 L', (2, 64, 1, 1, 3136), GPU_DTYPES, dict(oflex=True)),
    ('n1 odd channels/group', (3, 5, 1, 1, 147), GPU_DTYPES, dict(with_bias=False)),
    ('n16 groups', (2, 32, 4, 16, 777), GPU_DTYPES, dict(oflex=True)),
    ('n4 long, no softplus', (1, 4, 2, 4, 20000), ('fp32', 'bf16'),
     dict(softplus=False, with_D=False)),
    ('n1 detection L', (1, 8, 1, 1, 67000), ('fp32', 'bf16'), {}),
])
# MSVMamba-Tiny (master) at 224x224, per stage: (stage, E, full-res L, low-res L).
TINY_STAGES = [(0, 192, 3136, 2352), (1, 384, 784, 588), (2, 768, 196, 147), (3, 1536, 49, 48)]


def result_dtypes(case: ScanCase) -> Dict[str, torch.dtype]:
    """The dtype each result of a backend's fwd / bwd must have for ``case``."""
    dtype = DTYPES[case.dtype]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = {'out': acc if case.out_float else dtype}
    out.update({'d' + k: acc if k in ACC_ARGS else dtype for k in ARG_NAMES})
    return out


def check_backend(backend, case: ScanCase, args: Dict, dout: torch.Tensor,
                  ref) -> Dict[str, float]:
    """:func:`rel_error` per tensor of a backend module's ``fwd`` / ``bwd`` (the backend
    interface, normalised inputs) against ``ref`` = :func:`oracle` output; a result of the
    wrong dtype counts as inf."""
    ins = [args[k] for k in ARG_NAMES]
    results = dict(zip(('out', ) + GRAD_NAMES,
                       [backend.fwd(*ins, case.softplus, case.out_float),
                        *backend.bwd(*ins, dout, case.softplus)]))
    y_ref, g_ref, _ = ref
    want = result_dtypes(case)
    errs = {}
    for (name, got), expected in zip(results.items(), [y_ref, *g_ref]):
        ok_dtype = got is None or got.dtype == want[name]
        errs[name] = rel_error(got, expected) if ok_dtype else math.inf
    return errs


def passes(backend: str, case: ScanCase, errs: Dict[str, float]) -> bool:
    """Every error within :func:`tolerance` of ``backend`` for its result dtype (NaN and
    inf never pass)."""
    want = result_dtypes(case)
    return all(err <= tolerance(backend, want[name]) for name, err in errs.items())


# ---------------------------------------------------------------------------- backends

def backend_device(name: str) -> Optional[str]:
    """The device a backend is tested on here (from its ``SUPPORT``): the CPU when it runs
    on CPU tensors, a GPU when it runs on CUDA tensors and one is visible, else the CPU
    when an emulator runs it there (Triton under TRITON_INTERPRET=1); else None."""
    support = backend_module(name).SUPPORT
    if support.runs_on('cpu'):
        return 'cpu'
    if support.runs_on('cuda') and torch.cuda.is_available():
        return 'cuda'
    if backend_unavailable_reason(name, 'cpu') is None:
        return 'cpu'
    return None


def require_backend(name: str) -> str:
    """The device to test backend ``name`` on; skips the calling pytest test when it cannot
    run here (building the cpu extension first if needed)."""
    import pytest
    device = backend_device(name)
    if device is None:
        pytest.skip(f'backend {name!r} needs a GPU (on the CPU: '
                    f"{backend_unavailable_reason(name, 'cpu')})")
    reason = backend_unavailable_reason(name, device, build=True)
    if reason is not None:
        pytest.skip(f'backend {name!r} unavailable: {reason}')
    return device


__all__ = ['ARG_NAMES', 'GRAD_NAMES', 'DTYPES', 'TOLERANCES', 'tolerance', 'make_inputs',
           'make_dout', 'grads_of', 'oracle', 'rel_error', 'assert_close', 'assert_results_close',
           'ScanCase', 'cases', 'GPU_CASES', 'TINY_STAGES',
           'check_backend', 'passes', 'backend_device', 'require_backend']
