"""The 'chunked' scan backend (msvmamba_ops/chunked_scan.py) where it differs from the
others: decays near 0 and near 1 (its floored log decays and its exponent ranges), long
sequences, the recurrence's own chunk edges, and what export records. The shared cases
(every shape, fp16/bf16, NaN/Inf, L = 67,000 with model-like inputs, the custom-op
checks) run it through ``BACKENDS`` in test_selective_scan.py / test_scan_dispatch.py."""
import pytest
import torch

from msvmamba_ops import reference as reference_backend
from msvmamba_ops import selective_scan
from msvmamba_ops.chunked_scan import CHUNK, linear_recurrence, softplus
from msvmamba_ops.testing import (ARG_NAMES, assert_close, grads_of, make_dout, make_inputs,
                                  oracle, tolerance)

TOL = tolerance('chunked', torch.float32)


def _check(args, softplus, ref=None):
    """Output and every gradient of backend 'chunked' against the float64 oracle (``ref``:
    a precomputed ``(y, grads, dout)``, for sequences too long for autograd's oracle)."""
    y64, g64, dout = oracle(args, softplus) if ref is None else ref
    y, grads, _ = grads_of(selective_scan, args, softplus, dout=dout.float(),
                           backend='chunked')
    for name, got, want in zip(('y', ) + ARG_NAMES, [y, *grads], [y64, *g64]):
        assert_close(got, want, TOL, name)


def _adjoint_oracle(args, softplus, seed=1):
    """float64 output and gradients by the reference backend's loop and explicit adjoint."""
    ins = [None if args[k] is None else args[k].double() for k in ARG_NAMES]
    dout = make_dout(ins[0], torch.float64, seed)
    return (reference_backend.fwd(*ins, softplus, False),
            list(reference_backend.bwd(*ins, dout, softplus)), dout)


def test_decays_near_zero():
    """dt * A from -15 to -60: floored at -18 in the forward (below float32 resolution),
    the gradients use the true decays."""
    args = make_inputs(2, 4, 203, softplus=False, seed=5)
    args['delta'] = args['delta'] * 100 + 15  # dt in 15..25, A ~ -1.1: decays e^-15..e^-30
    args['A'] = args['A'] * 2
    _check(args, False)


def test_strong_and_weak_decays_mixed():
    """A third of the steps decay by ~e^-15 (almost a reset), the others barely: within
    one chunk the exponents then span a wide range."""
    args = make_inputs(2, 4, 1001, seed=6)
    strong = torch.rand(args['delta'].shape, generator=torch.Generator().manual_seed(7)) < 0.3
    args['delta'] = torch.where(strong, torch.full_like(args['delta'], 15.0),
                                args['delta'] - 3)
    _check(args, True)


def test_decays_near_one_long_sequence():
    """dt ~ 1e-5 over 67,000 steps: the state keeps everything it ever saw (error of
    products of rounded decays would grow with the length)."""
    args = make_inputs(1, 2, 67_000, softplus=False, seed=4)
    args['delta'] = args['delta'] * 1e-4
    args['delta_bias'] = torch.full_like(args['delta_bias'], 1e-5)
    _check(args, False, _adjoint_oracle(args, False))


@pytest.mark.parametrize('length', [1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK**2, CHUNK**3 + 1])
@pytest.mark.parametrize('levels', [None, 6])
def test_linear_recurrence_chunk_edges(length, levels):
    """h_t = exp(s_t) h_{t-1} + x_t at lengths around the chunk and level edges, with the
    level count of export (6 fixed levels) and of eager (as many as needed)."""
    gen = torch.Generator().manual_seed(length)
    s = -torch.rand(3, length, generator=gen, dtype=torch.float64) * 3
    x = torch.randn(3, length, generator=gen, dtype=torch.float64)
    h, expected = torch.zeros(3, dtype=torch.float64), []
    for t in range(length):
        h = torch.exp(s[:, t]) * h + x[:, t]
        expected.append(h)
    assert_close(linear_recurrence(s, x, levels), torch.stack(expected, -1), 1e-12)


def test_float64():
    args = make_inputs(2, 6, 97, 3, 3, dtype=torch.float64)
    y64, g64, dout = oracle(args, True)
    y, grads, _ = grads_of(selective_scan, args, True, dout=dout, backend='chunked')
    for name, got, want in zip(('y', ) + ARG_NAMES, [y, *grads], [y64, *g64]):
        assert_close(got, want, tolerance('chunked', torch.float64), name)


class _Scan(torch.nn.Module):
    def forward(self, u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True)


def test_export_records_plain_ops():
    """torch.export of a scan (auto backend: the CPU kernel in eager) records the chunked
    plain ops, not the custom op, with a dynamic length. (torch.export keeps shape guards
    of the example length, e.g. its divisibility by the chunk; the ONNX graph has no
    guards and is checked at many sizes in tests/deployment.)"""
    args = make_inputs(2, 4, 100)
    ins = tuple(args[k] for k in ARG_NAMES)
    length = torch.export.Dim.DYNAMIC
    program = torch.export.export(_Scan(), ins, dynamic_shapes=(
        {2: length}, {2: length}, None, {3: length}, {3: length}, None, None))
    targets = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert not any('msvmamba' in t for t in targets), sorted(targets)
    assert any('cumsum' in t for t in targets)
    other = make_inputs(2, 4, 100, seed=1)
    y = program.module()(*(other[k] for k in ARG_NAMES))
    assert_close(y, oracle(other, True)[0], TOL)


def test_onnx_export_dynamic_sizes(tmp_path):
    """The ONNX graph (TorchScript exporter, as tools/deployment/pytorch2onnx.py) is
    recorded at one batch and length and must hold at others: no size of the example may
    be recorded as a constant (chunk padding, the levels' reshapes, the time-major
    layout)."""
    ort = pytest.importorskip('onnxruntime')
    dynamic = {'u': {0: 'b', 2: 'l'}, 'delta': {0: 'b', 2: 'l'}, 'B': {0: 'b', 3: 'l'},
               'C': {0: 'b', 3: 'l'}}
    path = str(tmp_path / 'scan.onnx')
    example = make_inputs(1, 8, 50, groups=2)
    with torch.no_grad():
        torch.onnx.export(_Scan(), tuple(example[k] for k in ARG_NAMES), path, dynamo=False,
                          opset_version=18, input_names=list(ARG_NAMES), dynamic_axes=dynamic)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch, length in [(3, 37), (2, CHUNK**3 + 1), (1, 1)]:
        args = make_inputs(batch, 8, length, groups=2, seed=length)
        y = session.run(None, {k: args[k].numpy() for k in ARG_NAMES})[0]
        assert_close(torch.from_numpy(y), oracle(args, True)[0], TOL)


def test_softplus_matches_torch():
    """The exporter-friendly softplus against torch's, across its threshold (20) and where
    exp(v) would overflow."""
    v = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([19.999, 20.0, 20.001, 100.0,
                                                                 1e30, -1e30])])
    torch.testing.assert_close(softplus(v), torch.nn.functional.softplus(v), rtol=3e-7, atol=0)
