"""Dispatch, the backend protocol, errors, warnings, the torch.library ops (opcheck,
torch.compile) and the FLOP handle of msvmamba_ops.selective_scan."""
import inspect
import sys
import types
import warnings

import pytest
import torch

import msvmamba_ops
from msvmamba_ops import scan as scan_mod
from msvmamba_ops import BACKENDS, selective_scan, selective_scan_ref
from msvmamba_ops.backend import NO_FLOAT64, ScanBackend, Support
from msvmamba_ops.testing import (ARG_NAMES, assert_close, make_inputs, require_backend,
                                  tolerance)

backend_params = pytest.mark.parametrize('backend', BACKENDS)


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(scan_mod, '_warned', set())
    monkeypatch.delenv('MSVMAMBA_SCAN_BACKEND', raising=False)


def test_auto_picks_cpu_kernel(fresh_warnings):
    require_backend('cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert msvmamba_ops.resolve_backend('cpu', torch.float32) == 'cpu'
        assert msvmamba_ops.resolve_backend('cpu', torch.float64) == 'cpu'


def test_missing_kernel_warns_once(fresh_warnings, monkeypatch):
    from msvmamba_ops import cpu_scan
    monkeypatch.setattr(cpu_scan, 'unavailable_reason', lambda *args, **kwargs: 'not built')
    args = make_inputs(1, 2, 8)
    with pytest.warns(RuntimeWarning, match=r'bash tools/setup\.sh') as record:
        for _ in range(3):
            y = selective_scan(**args, delta_softplus=True)
    assert len([w for w in record if 'fast cpu kernel' in str(w.message)]) == 1
    assert_close(y, selective_scan_ref(**args, delta_softplus=True),
                 tolerance('reference', torch.float32))
    assert msvmamba_ops.resolve_backend('cpu') == 'reference'


def test_env_var_and_per_call_override(fresh_warnings, monkeypatch):
    monkeypatch.setenv('MSVMAMBA_SCAN_BACKEND', 'reference')
    assert msvmamba_ops.resolve_backend('cpu') == 'reference'
    monkeypatch.setenv('MSVMAMBA_SCAN_BACKEND', 'no-such')
    with pytest.raises(ValueError, match="unknown backend 'no-such' .*MSVMAMBA_SCAN_BACKEND"):
        msvmamba_ops.resolve_backend('cpu')
    assert msvmamba_ops.resolve_backend('cpu', backend='reference') == 'reference'
    args = make_inputs(1, 2, 8)
    y = selective_scan(**args, backend='reference')  # per call wins over the bad env value
    assert y.shape == args['u'].shape


def test_explicit_backend_errors(fresh_warnings):
    with pytest.raises(RuntimeError, match="backend 'cuda' .*cannot run on cpu tensors"):
        msvmamba_ops.resolve_backend('cpu', backend='cuda')
    with pytest.raises(TypeError, match="'triton' does not support float64"):
        msvmamba_ops.resolve_backend('cuda', torch.float64, backend='triton')
    assert msvmamba_ops.resolve_backend('cuda', torch.float64, backend='auto') == 'reference'


def test_devices_without_a_kernel_get_the_chunked_scan(fresh_warnings):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # not a missing kernel: no warning
        for dtype in (torch.float32, torch.float64):
            assert msvmamba_ops.resolve_backend('mps', dtype) == 'chunked'


def _parameters(function, skip_self=False):
    names = list(inspect.signature(function).parameters)
    return names[1:] if skip_self else names


@backend_params
def test_backend_module_has_the_protocol(backend):
    """Every registered module has the members of backend.ScanBackend, with its parameter
    names (what scan.py calls them with)."""
    module = scan_mod.backend_module(backend)
    assert isinstance(module.SUPPORT, Support)
    for member in ('unavailable_reason', 'fwd', 'bwd'):
        assert _parameters(getattr(module, member)) == _parameters(
            getattr(ScanBackend, member), skip_self=True), member
    if module.SUPPORT.inline:
        assert _parameters(module.scan) == _parameters(module.fwd)
    # Says why (a string) or None where it runs, and never raises for a device it lacks; a
    # dtype outside SUPPORT.dtypes is always a reason, and so is a device outside
    # SUPPORT.devices (but the CPU, where an emulator may run a GPU backend).
    for device in ('cpu', 'cuda', 'mps'):
        for dtype in (torch.float32, torch.float64):
            reason = module.unavailable_reason(device, dtype)
            assert reason is None or isinstance(reason, str) and reason
            if dtype not in module.SUPPORT.dtypes or (
                    device != 'cpu' and not module.SUPPORT.runs_on(device)):
                assert reason


def test_a_new_backend_is_a_module_and_one_registry_entry(fresh_warnings, monkeypatch):
    """docs/development.md, 'Add a scan backend': a module with the protocol and an entry
    in REGISTRY is all the dispatcher needs (auto choice, dtype check, fwd and bwd)."""
    from msvmamba_ops import reference
    calls = []
    fake = types.ModuleType('fake_scan')
    fake.SUPPORT = Support(devices=('cpu', ), dtypes=NO_FLOAT64)
    fake.unavailable_reason = lambda device_type, dtype=torch.float32, build=False: (
        fake.SUPPORT.unsupported(device_type, dtype))
    fake.fwd = lambda *args: calls.append('fwd') or reference.fwd(*args)
    fake.bwd = lambda *args: calls.append('bwd') or reference.bwd(*args)
    monkeypatch.setitem(sys.modules, 'fake_scan', fake)
    monkeypatch.setattr(scan_mod, '_modules', dict(scan_mod._modules))
    monkeypatch.setattr(scan_mod, 'REGISTRY', {
        'fake': scan_mod.Registered('fake_scan', auto=('cpu', )), **scan_mod.REGISTRY})
    assert msvmamba_ops.resolve_backend('cpu') == 'fake'  # first in the registry for CPU
    assert msvmamba_ops.resolve_backend('cpu', torch.float64) != 'fake'  # no float64
    with pytest.raises(TypeError, match="'fake' does not support float64"):
        msvmamba_ops.resolve_backend('cpu', torch.float64, backend='fake')
    args = make_inputs(1, 4, 9)
    args['u'].requires_grad_()
    y = selective_scan(**args, delta_softplus=True)
    y.sum().backward()
    assert calls == ['fwd', 'bwd']
    assert_close(y, selective_scan_ref(**args, delta_softplus=True),
                 tolerance('reference', torch.float32))


def _bad(**changes):
    args = make_inputs(2, 4, 10, 1, 1)
    args.update(changes)
    return args


@pytest.mark.parametrize('args,exc,pattern', [
    (_bad(u=torch.zeros(2, 4)), ValueError, r'u must have shape \(Bt, D, L\), got \(2, 4\)'),
    (_bad(delta=torch.zeros(2, 4, 9)), ValueError,
     r'delta must have shape \(Bt, D, L\) = \(2, 4, 10\) like u, got \(2, 4, 9\)'),
    (_bad(A=torch.zeros(3, 1)), ValueError, r'A must have shape \(D, N\) = \(4, N\), got \(3, 1\)'),
    (_bad(B=torch.zeros(2, 1, 1, 9)), ValueError,
     r'B must have shape \(Bt, G, N, L\) = \(2, G, 1, 10\) with G dividing D=4, or '
     r'\(Bt, N, L\) = \(2, 1, 10\), got \(2, 1, 1, 9\)'),
    (_bad(C=torch.zeros(2, 3, 1, 10)), ValueError, r'C must have shape .* got \(2, 3, 1, 10\)'),
    (_bad(D=torch.zeros(5)), ValueError, r'D must have shape \(D,\) = \(4,\), got \(5,\)'),
    (_bad(delta_bias=torch.zeros(4, 1)), ValueError, r'delta_bias must have shape \(D,\)'),
    (_bad(delta=torch.zeros(2, 4, 10, dtype=torch.float16)), TypeError,
     r'u, delta, B and C must share one dtype .* '
     r'got u float32, delta float16, B float32, C float32'),
    (_bad(A=torch.zeros(4, 1, dtype=torch.int64)), TypeError, r'A must be a floating-point'),
    (_bad(D=torch.zeros(4, device='meta')), ValueError, r'D is on meta but u is on cpu'),
    (_bad(B=[1, 2]), TypeError, r'B must be a torch.Tensor, got list'),
])
def test_error_messages(args, exc, pattern):
    with pytest.raises(exc, match=r'^selective_scan: ' + pattern):
        selective_scan(**args, backend='reference')


def test_inputs_normalised(monkeypatch):
    """Backends receive contiguous tensors, 4-D B/C and fp32 A/D/delta_bias."""
    seen = {}

    def spy(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
        seen.update(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)

    from msvmamba_ops import reference
    monkeypatch.setattr(reference, 'fwd', spy)
    args = make_inputs(2, 4, 10)
    args['u'] = args['u'].transpose(1, 2).contiguous().transpose(1, 2)
    args['B'] = args['B'][:, 0]
    args['A'] = args['A'].double()
    selective_scan(**args, backend='reference')
    assert all(t.is_contiguous() for t in seen.values())
    assert seen['B'].dim() == 4 and seen['A'].dtype == torch.float32


@backend_params
def test_opcheck(backend):
    device = require_backend(backend)
    for nstate, with_D in ((1, True), (2, False)):
        a = make_inputs(2, 4, 9, nstate, 2, with_D=with_D, device=device)
        ins = tuple(a[k] for k in ARG_NAMES)
        torch.library.opcheck(torch.ops.msvmamba.selective_scan_fwd,
                              ins + (True, False, backend))
        dout = torch.randn_like(a['u'])
        torch.library.opcheck(torch.ops.msvmamba.selective_scan_bwd, ins + (dout, True, backend))


class TinyScanModule(torch.nn.Module):
    """An MSVMamba-like use of the scan: projections, A = -exp(A_log), gating after."""

    def __init__(self, dim=4, nstate=1):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.zeros(dim, nstate))
        self.Ds = torch.nn.Parameter(torch.ones(dim))
        self.dt_bias = torch.nn.Parameter(torch.zeros(dim))
        self.proj = torch.nn.Linear(dim, dim + 2 * nstate)
        self.nstate = nstate

    def forward(self, x, with_D=True):  # x: (Bt, D, L)
        dim, n = x.shape[1], self.nstate
        dbc = self.proj(x.transpose(1, 2)).transpose(1, 2)
        delta, B, C = dbc.split([dim, n, n], dim=1)
        y = selective_scan(x, delta.contiguous(), -torch.exp(self.A_log), B.contiguous(),
                           C.contiguous(), self.Ds if with_D else None, self.dt_bias,
                           delta_softplus=True)
        return torch.nn.functional.silu(y)


def test_torch_compile_fullgraph():
    """No graph break (fullgraph=True) and the same values and gradients as eager. The
    aot_eager backend runs the fake impls and the autograd formula without Inductor's
    (slow) C++ code generation."""
    torch._dynamo.reset()
    model = TinyScanModule()
    x = torch.randn(2, 4, 33, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    y_eager = model(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, x.grad)


@pytest.mark.parametrize('with_D', [True, False])
def test_flop_count_mmengine(with_D):
    analysis = pytest.importorskip('mmengine.analysis')
    from msvmamba_ops.flops import MSVMAMBA_FLOP_HANDLES, scan_flops

    class ScanOnly(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D):
            return selective_scan(u, delta, A, B, C, D if with_D else None, None, True)

    bt, dim, length, nstate = 2, 6, 35, 3
    a = make_inputs(bt, dim, length, nstate, 1)
    inputs = (a['u'], a['delta'], a['A'], a['B'], a['C'], a['D'])
    analyzer = analysis.FlopAnalyzer(ScanOnly(), inputs).set_op_handle(**MSVMAMBA_FLOP_HANDLES)
    expected = 9 * bt * length * dim * nstate + (bt * dim * length if with_D else 0)
    assert scan_flops(bt, dim, length, nstate, with_D) == expected
    assert analyzer.total() == expected
    assert not analyzer.unsupported_ops()


def test_flop_and_activation_handles_on_a_module():
    analysis = pytest.importorskip('mmengine.analysis')
    from msvmamba_ops.flops import MSVMAMBA_ACTIVATION_HANDLES, MSVMAMBA_FLOP_HANDLES
    model = TinyScanModule(dim=4, nstate=1)
    x = torch.randn(1, 4, 10)
    flops = analysis.FlopAnalyzer(model, (x,)).set_op_handle(**MSVMAMBA_FLOP_HANDLES)
    assert flops.by_operator()['selective_scan_fwd'] == 9 * 40 + 40
    acts = analysis.ActivationAnalyzer(model, (x,)).set_op_handle(**MSVMAMBA_ACTIVATION_HANDLES)
    assert acts.by_operator()['selective_scan_fwd'] == 40  # Bt x D x L outputs
    assert acts.total() == 40 + 10 * 6  # plus the linear layer's L x (D + 2N)


@backend_params
def test_backend_runs_tiny_module(backend):
    """Every available backend drives the module (the auto-dispatch path is covered above)."""
    device = require_backend(backend)
    model = TinyScanModule().to(device)
    x = torch.randn(2, 4, 17, device=device)
    y_ref = model(x)  # auto backend
    with torch.no_grad():
        dbc = model.proj(x.transpose(1, 2)).transpose(1, 2)
        delta, B, C = dbc.split([4, 1, 1], dim=1)
        y = selective_scan(x, delta, -torch.exp(model.A_log), B, C, model.Ds, model.dt_bias,
                           delta_softplus=True, backend=backend)
    assert_close(torch.nn.functional.silu(y), y_ref, tolerance(backend, torch.float32))
