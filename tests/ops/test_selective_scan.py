"""Numerics of msvmamba_ops.selective_scan: every backend against the float64 reference
(forward and backward), gradcheck, low precision, NaN/Inf, long sequences."""
import math

import pytest
import torch

from msvmamba_ops import BACKENDS, selective_scan, selective_scan_ref
from msvmamba_ops import reference as reference_backend
from msvmamba_ops.scan import backend_module
from msvmamba_ops.testing import (ARG_NAMES, assert_close, assert_results_close, grads_of,
                                  make_dout, make_inputs, oracle, require_backend, tolerance)

backend_params = pytest.mark.parametrize('backend', BACKENDS)
FLOAT64_BACKENDS = [b for b in BACKENDS if backend_module(b).SUPPORT.float64]

# (nstate, groups, with_D, with_bias, softplus)
GRAD_CASES = [
    (1, 1, True, True, True),
    (1, 1, False, False, False),
    (1, 1, True, False, True),
    (1, 1, False, True, False),
    (1, 2, True, False, False),
    (4, 1, True, True, True),
    (4, 2, False, True, True),
    (4, 2, True, True, False),
]


@pytest.mark.parametrize('backend', FLOAT64_BACKENDS)
@pytest.mark.parametrize('nstate,groups,with_D,with_bias,softplus', GRAD_CASES)
def test_gradcheck_float64(backend, nstate, groups, with_D, with_bias, softplus):
    require_backend(backend)
    args = make_inputs(2, 4, 6, nstate, groups, softplus=softplus, with_D=with_D,
                       with_bias=with_bias, dtype=torch.float64)
    names = [k for k in ARG_NAMES if args[k] is not None]

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        return selective_scan(**kw, delta_softplus=softplus, backend=backend)

    leaves = tuple(args[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


# (Bt, D, L, N, G): L = 1, L not a power of two, chunk edges of the CPU kernel (256), a row
# count that does not fill the kernel's 8 interleaved rows, 3-D B/C is covered below.
SHAPES = [
    (2, 4, 1, 1, 1),
    (1, 3, 5, 1, 1),
    (2, 12, 257, 1, 1),
    (3, 11, 1000, 1, 1),
    (2, 8, 513, 4, 2),
    (1, 6, 300, 3, 3),
]


@backend_params
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('softplus', [True, False])
def test_backend_matches_reference(backend, shape, softplus):
    device = require_backend(backend)
    bt, dim, length, nstate, groups = shape
    args = make_inputs(bt, dim, length, nstate, groups, softplus=softplus, device=device,
                       seed=hash(shape) % 1000)
    y64, g64, dout = oracle(args, softplus)
    y, grads, _ = grads_of(selective_scan, args, softplus, dout=dout.float().to(device),
                           backend=backend)
    assert y.dtype == torch.float32
    assert_results_close(y, grads, y64, g64, tolerance(backend, torch.float32))


@backend_params
def test_bc_3d_and_no_optional_args(backend):
    device = require_backend(backend)
    args = make_inputs(2, 4, 40, with_D=False, with_bias=False, device=device)
    args3 = dict(args, B=args['B'][:, 0], C=args['C'][:, 0])
    y = selective_scan(**args3, delta_softplus=True, backend=backend)
    assert_close(y, selective_scan_ref(**args, delta_softplus=True),
                 tolerance(backend, torch.float32))
    leaves = {k: v.clone().requires_grad_() for k, v in args3.items() if v is not None}
    selective_scan(**leaves, delta_softplus=True, backend=backend).sum().backward()
    assert leaves['B'].grad.shape == args3['B'].shape


def test_reference_backend_bwd_matches_autograd():
    """The explicit adjoint of the 'reference' backend vs autograd through the loop."""
    args = make_inputs(2, 6, 70, 3, 2, dtype=torch.float64)
    y64, g64, dout = oracle(args, True)
    grads = reference_backend.bwd(*(args[k] for k in ARG_NAMES), dout, True)
    for name, g, g_ref in zip(ARG_NAMES, grads, g64):
        assert_close(g, g_ref, tolerance('reference', torch.float64), 'd' + name)


LONG_L = 66_999  # detection scale (e.g. 1280x800 / 4), not a multiple of any chunk size


@pytest.fixture(scope='module')
def long_case():
    """Oracle for L ~ 67,000: the reference backend's fwd / explicit adjoint in float64
    (autograd through 67,000 steps would take minutes; the adjoint is checked against
    autograd above and by gradcheck)."""
    args = make_inputs(1, 2, LONG_L, seed=3)
    args64 = {k: None if v is None else v.double() for k, v in args.items()}
    dout = torch.randn(args['u'].shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    ins = [args64[k] for k in ARG_NAMES]
    y64 = reference_backend.fwd(*ins, True, False)
    g64 = list(reference_backend.bwd(*ins, dout, True))
    return args, (y64, g64, dout)


@backend_params
def test_long_sequence(backend, request):
    if backend == 'reference':
        pytest.skip('the float64 reference backend is the oracle here')
    device = require_backend(backend)
    args, (y64, g64, dout) = request.getfixturevalue('long_case')  # only when needed
    args = {k: None if v is None else v.to(device) for k, v in args.items()}
    y, grads, _ = grads_of(selective_scan, args, True, dout=dout.float().to(device),
                           backend=backend)
    assert_results_close(y, grads, y64, g64, tolerance(backend, torch.float32))


@backend_params
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(backend, dtype):
    """fp16/bf16 inputs: each result within the bound of its dtype (A, D, delta_bias and
    their gradients are float32), against the float64 oracle on the rounded inputs."""
    device = require_backend(backend)
    args = make_inputs(2, 8, 300, 2, 1, dtype=dtype, device=device)
    dout = make_dout(args['u'])
    y64, g64, _ = oracle(args, True, dout)
    y, grads, _ = grads_of(selective_scan, args, True, dout=dout, backend=backend)
    assert y.dtype == dtype
    assert_close(y, y64, tolerance(backend, dtype), 'y')
    for name, g, g_ref in zip(ARG_NAMES, grads, g64):
        assert g.dtype == args[name].dtype
        assert_close(g, g_ref, tolerance(backend, g.dtype), 'd' + name)
    # out_float: float32 output, the fp32 arithmetic on the rounded inputs
    yf = selective_scan(**args, delta_softplus=True, out_float=True, backend=backend)
    assert yf.dtype == torch.float32
    assert_close(yf, y64, tolerance(backend, torch.float32), 'y (out_float)')


@backend_params
def test_nan_inf_propagate(backend):
    device = require_backend(backend)
    args = make_inputs(2, 8, 600, device=device)
    args['delta'][0, 1, 5] = math.nan
    args['u'][1, 2, 300] = math.inf
    args['B'][1, 0, 0, 450] = -math.inf  # every channel of batch 1 from t = 450
    y_ref = selective_scan_ref(**args, delta_softplus=True)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    y.sum().backward()  # must not hang or crash
    finite = torch.isfinite(y_ref)
    assert torch.equal(torch.isfinite(y), finite)
    assert torch.isnan(y[0, 1, 5:]).all()
    assert torch.isfinite(y[0, 0]).all() and torch.isfinite(y[1, 2, :300]).all()
    assert_close(y[finite], y_ref[finite], tolerance(backend, torch.float32))


@pytest.mark.parametrize('isa,segment', [('default', None), ('avx2', None), ('avx512', None),
                                         ('avx512', 256), ('default', 512)])
def test_cpu_instruction_sets(isa, segment, monkeypatch):
    """Each vectorised copy of the CPU kernel (a lower one is used when the CPU lacks it), and
    its backward with the time axis cut into several stored segments (long sequences)."""
    require_backend('cpu')
    monkeypatch.setenv('MSVMAMBA_CPU_ISA', isa)
    if segment is not None:
        monkeypatch.setenv('MSVMAMBA_CPU_SEGMENT', str(segment))
    args = make_inputs(2, 9, 1300, 2, 1)
    y64, g64, dout = oracle(args, True)
    y, grads, _ = grads_of(selective_scan, args, True, dout=dout.float(), backend='cpu')
    assert_results_close(y, grads, y64, g64, tolerance('cpu', torch.float32))
