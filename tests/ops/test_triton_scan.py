"""Tests of the Triton selective-scan backend (msvmamba_ops/triton_scan.py).

Without a GPU the kernels run in Triton's interpreter, which must be switched on
(TRITON_INTERPRET=1) before triton is first imported. To keep that setting out of the rest of
the test session, the interpreter checks run in ONE child process (this file executed as a
script); each pytest case below reports the result of one check. The GPU test (large L) runs
in-process and is skipped without CUDA.

Oracle: ``selective_scan_ref`` in float64 on the upcast inputs (for fp16/bf16, the inputs are
rounded to that dtype first, so only the kernel's own rounding is measured), gradients by
autograd. Tolerances, on max |error| relative to max(1, max |ref|) per tensor:
fp32 1e-4, fp16 3e-3, bf16 2e-2 (fp32 accumulation; fp16/bf16 results are rounded once).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_TRITON = importlib.util.find_spec('triton') is not None
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
GRAD_NAMES = ('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias')

# name -> (Bt, D, G, N, L, dtype, has_D, has_bias, softplus, out_float, dout_fp32, block_l,
#          block_d). block_l / block_d None = the backend's own choice (fwd/bwd entry points).
CASES = {
    'n1_g1_full_carry': (2, 4, 1, 1, 37, 'float32', True, True, True, False, False, 16, None),
    'n1_g2_D_only_no_softplus':
        (2, 4, 2, 1, 37, 'float32', True, False, False, False, False, 16, None),
    'n4_g1_carry': (1, 2, 1, 4, 37, 'float32', True, True, True, False, False, 16, None),
    'n4_g2_plain_carry_multiblock':
        (1, 6, 2, 4, 37, 'float32', False, False, False, False, False, 16, 2),
    'n4_g2_bias_only': (1, 4, 2, 4, 37, 'float32', False, True, True, False, False, 16, 1),
    'n16_g1_D_only': (1, 2, 1, 16, 20, 'float32', True, False, True, False, False, 16, None),
    'L1_default_config': (2, 3, 1, 1, 1, 'float32', True, True, True, False, False, None, None),
    'L37_default_config': (1, 4, 2, 2, 37, 'float32', True, True, True, False, False, None,
                           None),
    'fp16_n1': (2, 4, 1, 1, 37, 'float16', True, True, True, False, False, 16, None),
    'bf16_n4_g2_outfloat_dout32':
        (1, 4, 2, 4, 37, 'bfloat16', True, True, True, True, True, 16, None),
}
NONFINITE_CASES = ('nan_u', 'nan_delta', 'inf_u')


def _make(Bt, D, G, N, L, dtype, has_D, has_bias, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    u = rnd(Bt, D, L).to(dtype)
    delta = rnd(Bt, D, L, scale=0.5).to(dtype)
    A = -(torch.rand(D, N, generator=gen) + 0.2).to(device)
    B = rnd(Bt, G, N, L).to(dtype)
    C = rnd(Bt, G, N, L).to(dtype)
    Dv = rnd(D) if has_D else None
    bias = rnd(D, scale=0.3) if has_bias else None
    return u, delta, A, B, C, Dv, bias


def _reference(u, delta, A, B, C, D, bias, softplus, dout):
    """float64 forward and autograd gradients of selective_scan_ref on the upcast inputs."""
    from msvmamba_ops.reference import selective_scan_ref
    xs = [None if x is None else x.detach().double().requires_grad_() for x in
          (u, delta, A, B, C, D, bias)]
    y = selective_scan_ref(*xs, delta_softplus=softplus)
    y.backward(dout.double())
    return y.detach(), [None if x is None else x.grad for x in xs]


def _compare(name, got, ref, tol):
    """Return an error message, or None when |got - ref| <= tol * max(1, max|ref|)."""
    if (got is None) != (ref is None):
        return f'{name}: got {got is not None}, expected {ref is not None}'
    if got is None:
        return None
    if got.shape != ref.shape:
        return f'{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}'
    err = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    if not err <= tol * scale:
        return f'{name}: max err {err:.3g} > {tol:g} * {scale:.3g}'
    return None


def _check_case(ts, Bt, D, G, N, L, dtype, has_D, has_bias, softplus, out_float, dout_fp32,
                block_l, block_d, device='cpu'):
    """Run fwd and bwd of backend module ``ts`` against the reference; list of errors."""
    dtype = getattr(torch, dtype)
    u, delta, A, B, C, Dv, bias = _make(Bt, D, G, N, L, dtype, has_D, has_bias, device)
    dout = torch.randn(Bt, D, L, generator=torch.Generator().manual_seed(1)).to(device)
    dout = dout if dout_fp32 else dout.to(dtype)
    if block_l is None and block_d is None:
        out = ts.fwd(u, delta, A, B, C, Dv, bias, softplus, out_float)
        grads = ts.bwd(u, delta, A, B, C, Dv, bias, dout, softplus)
    else:
        kw = dict(block_l=block_l, block_d=block_d)
        out = ts._fwd(u, delta, A, B, C, Dv, bias, softplus, out_float, **kw)
        grads = ts._bwd(u, delta, A, B, C, Dv, bias, dout, softplus, **kw)
    y_ref, g_ref = _reference(u, delta, A, B, C, Dv, bias, softplus, dout)
    errors = []
    want_out = torch.float32 if out_float else dtype
    want = [dtype, dtype, torch.float32, dtype, dtype, torch.float32, torch.float32]
    if out.dtype != want_out:
        errors.append(f'out dtype {out.dtype} != {want_out}')
    errors.append(_compare('out', out, y_ref, TOL[torch.float32 if out_float else dtype]))
    for name, g, r, w in zip(GRAD_NAMES, grads, g_ref, want):
        if g is not None and g.dtype != w:
            errors.append(f'{name} dtype {g.dtype} != {w}')
        errors.append(_compare(name, g, r, TOL[w]))
    return [e for e in errors if e]


def _check_nonfinite(ts, kind):
    """A NaN (or Inf) input must show up in the outputs exactly where the reference has it."""
    u, delta, A, B, C, Dv, bias = _make(1, 3, 1, 2, 37, torch.float32, True, True)
    if kind == 'nan_u':
        u[0, 1, 5] = float('nan')
    elif kind == 'nan_delta':
        delta[0, 2, 20] = float('nan')
    else:
        u[0, 1, 5] = float('inf')
    dout = torch.randn(1, 3, 37, generator=torch.Generator().manual_seed(1))
    out = ts._fwd(u, delta, A, B, C, Dv, bias, True, False, block_l=16)
    grads = ts._bwd(u, delta, A, B, C, Dv, bias, dout, True, block_l=16)
    y_ref, g_ref = _reference(u, delta, A, B, C, Dv, bias, True, dout)
    errors = []
    if not torch.equal(out.isnan(), y_ref.isnan()) or not torch.equal(
            out.isinf(), y_ref.isinf()):
        errors.append('out: NaN/Inf positions differ from the reference')
    if not out.isnan().any() and not out.isinf().any():
        errors.append('out: the non-finite input did not propagate')
    fin = torch.isfinite(y_ref)
    errors.append(_compare('out[finite]', out[fin], y_ref[fin], TOL[torch.float32]))
    for name, g, r in zip(GRAD_NAMES, grads, g_ref):
        if kind.startswith('nan'):
            ok = torch.equal(g.isnan(), r.isnan())  # NaN inputs: identical NaN pattern
        else:
            # inf inputs: inf*0 vs inf-inf may differ; every non-finite ref entry must be
            # non-finite here too.
            ok = bool((~torch.isfinite(g))[~torch.isfinite(r)].all())
        if not ok:
            errors.append(f'{name}: non-finite positions differ from the reference')
        both = torch.isfinite(g) & torch.isfinite(r)
        errors.append(_compare(f'{name}[finite]', g[both], r[both], TOL[torch.float32]))
    return [e for e in errors if e]


def _worker():
    """Child process: run every interpreter check, print one JSON line of results."""
    assert os.environ.get('TRITON_INTERPRET') == '1'
    sys.path.insert(0, REPO)
    from msvmamba_ops import triton_scan as ts
    results = {'is_available': None if ts.is_available() else ['is_available() is False']}
    for name, case in CASES.items():
        try:
            results[name] = _check_case(ts, *case) or None
        except Exception as exc:  # noqa: BLE001 - reported to the parent test
            results[name] = [f'{type(exc).__name__}: {exc}']
    for kind in NONFINITE_CASES:
        try:
            results[kind] = _check_nonfinite(ts, kind) or None
        except Exception as exc:  # noqa: BLE001
            results[kind] = [f'{type(exc).__name__}: {exc}']
    print('RESULTS ' + json.dumps(results))


@pytest.fixture(scope='module')
def interp_results():
    if not HAS_TRITON:
        pytest.skip('triton is not installed')
    env = dict(os.environ, TRITON_INTERPRET='1',
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULTS ')]
    assert proc.returncode == 0 and lines, (
        f'interpreter worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n'
        f'{proc.stderr[-3000:]}')
    return json.loads(lines[-1][len('RESULTS '):])


@pytest.mark.parametrize('name', ['is_available', *CASES, *NONFINITE_CASES])
def test_triton_scan_interpreter(interp_results, name):
    assert interp_results[name] is None, '\n'.join(interp_results[name])


GPU_CASES = {
    # Detection-scale sequence (L ~ 67k, dozens of chunks), MSVMamba's N = 1, G = 1.
    'n1_g1_L67000': (1, 2, 1, 1, 67000, 'float32', True, True, True, False, False, None, None),
    # General state / groups, bf16, L not a power of two and > one chunk.
    'n16_g2_bf16_L4099':
        (2, 8, 2, 16, 4099, 'bfloat16', True, True, True, True, False, None, None),
    'n4_g1_fp16_L3000_multiblock':
        (1, 16, 1, 4, 3000, 'float16', True, False, True, False, False, 256, 4),
}


@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON
                    or os.environ.get('TRITON_INTERPRET') == '1',
                    reason='needs CUDA and compiled triton')
@pytest.mark.parametrize('name', list(GPU_CASES))
def test_triton_scan_gpu_large_L(name):
    from msvmamba_ops import triton_scan as ts
    errors = _check_case(ts, *GPU_CASES[name], device='cuda')
    assert not errors, '\n'.join(errors)


if __name__ == '__main__':
    _worker()
