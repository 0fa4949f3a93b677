"""Tests of the Triton selective-scan backend (msvmamba_ops/triton_scan.py).

Without a GPU the kernels run in Triton's interpreter, which must be switched on
(TRITON_INTERPRET=1) before triton is first imported. To keep that setting out of the rest of
the test session, the interpreter checks run in ONE child process (this file executed as a
script); each pytest case below reports the result of one check. The GPU test (large L) runs
in-process and is skipped without CUDA.

Oracle and tolerances: msvmamba_ops.testing (float64 reference on the inputs rounded to the
tested dtype, the 'triton' bounds of its table).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from msvmamba_ops.testing import (ARG_NAMES, GRAD_NAMES, ScanCase, check_backend, oracle,
                                  result_dtypes, tolerance)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_TRITON = importlib.util.find_spec('triton') is not None

# name -> (case, block_l, block_d); None blocks = the backend's own choice (fwd/bwd entry
# points), else its _fwd/_bwd with those blocks.
CASES = {
    'n1_g1_full_carry': (ScanCase('', 2, 4, 1, 1, 37), 16, None),
    'n1_g2_D_only_no_softplus':
        (ScanCase('', 2, 4, 2, 1, 37, with_bias=False, softplus=False), 16, None),
    'n4_g1_carry': (ScanCase('', 1, 2, 1, 4, 37), 16, None),
    'n4_g2_plain_carry_multiblock':
        (ScanCase('', 1, 6, 2, 4, 37, with_D=False, with_bias=False, softplus=False), 16, 2),
    'n4_g2_bias_only': (ScanCase('', 1, 4, 2, 4, 37, with_D=False), 16, 1),
    'n16_g1_D_only': (ScanCase('', 1, 2, 1, 16, 20, with_bias=False), 16, None),
    'L1_default_config': (ScanCase('', 2, 3, 1, 1, 1), None, None),
    'L37_default_config': (ScanCase('', 1, 4, 2, 2, 37), None, None),
    'fp16_n1': (ScanCase('', 2, 4, 1, 1, 37, dtype='fp16'), 16, None),
    'bf16_n4_g2_outfloat_dout32':
        (ScanCase('', 1, 4, 2, 4, 37, dtype='bf16', out_float=True, dout_float=True), 16, None),
}
NONFINITE_CASES = ('nan_u', 'nan_delta', 'inf_u')


class WithBlocks:
    """The Triton backend module's _fwd / _bwd with fixed blocks, as a backend (fwd, bwd)."""

    def __init__(self, ts, block_l, block_d):
        self.ts, self.blocks = ts, dict(block_l=block_l, block_d=block_d)

    def fwd(self, *args):
        return self.ts._fwd(*args, **self.blocks)

    def bwd(self, *args):
        return self.ts._bwd(*args, **self.blocks)


def _check_case(ts, case, block_l=None, block_d=None, device='cpu'):
    """Run fwd and bwd of backend module ``ts`` against the oracle; list of errors."""
    backend = ts if block_l is None and block_d is None else WithBlocks(ts, block_l, block_d)
    args, dout = case.inputs(device=device)
    errs = check_backend(backend, case, args, dout, oracle(args, case.softplus, dout))
    want = result_dtypes(case)
    return [f'{name}: max |error| / max |ref| {err:.3g} > {tolerance("triton", want[name]):g}'
            ' (inf: wrong dtype, shape or a NaN/Inf)'
            for name, err in errs.items() if not err <= tolerance('triton', want[name])]


def _check_nonfinite(ts, kind):
    """A NaN (or Inf) input must show up in the outputs exactly where the reference has it."""
    args, dout = ScanCase('', 1, 3, 1, 2, 37).inputs()
    where = args['delta'] if kind == 'nan_delta' else args['u']
    where[0, 1 + (kind == 'nan_delta'), 20 if kind == 'nan_delta' else 5] = (
        float('inf') if kind == 'inf_u' else float('nan'))
    ins = [args[k] for k in ARG_NAMES]
    out = ts._fwd(*ins, True, False, block_l=16)
    grads = ts._bwd(*ins, dout, True, block_l=16)
    y_ref, g_ref, _ = oracle(args, True, dout)
    tol = tolerance('triton', torch.float32)
    errors = []
    if not torch.equal(out.isnan(), y_ref.isnan()) or not torch.equal(
            out.isinf(), y_ref.isinf()):
        errors.append('out: NaN/Inf positions differ from the reference')
    if not out.isnan().any() and not out.isinf().any():
        errors.append('out: the non-finite input did not propagate')
    fin = torch.isfinite(y_ref)
    if not (out[fin].double() - y_ref[fin]).abs().max() <= tol * y_ref[fin].abs().max():
        errors.append('out: finite entries differ from the reference')
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
        if both.any() and not ((g[both].double() - r[both]).abs().max()
                               <= tol * r[both].abs().max()):
            errors.append(f'{name}: finite entries differ from the reference')
    return errors


def _worker():
    """Child process: run every interpreter check, print one JSON line of results."""
    assert os.environ.get('TRITON_INTERPRET') == '1'
    from msvmamba_ops import triton_scan as ts
    reason = ts.unavailable_reason('cpu')  # the interpreter runs it on CPU tensors
    results = {'available': None if reason is None else [f'unavailable: {reason}']}
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


@pytest.mark.parametrize('name', ['available', *CASES, *NONFINITE_CASES])
def test_triton_scan_interpreter(interp_results, name):
    assert interp_results[name] is None, '\n'.join(interp_results[name])


GPU_CASES = {
    # Detection-scale sequence (L ~ 67k, dozens of chunks), MSVMamba's N = 1, G = 1.
    'n1_g1_L67000': (ScanCase('', 1, 2, 1, 1, 67000), None, None),
    # General state / groups, bf16, L not a power of two and > one chunk.
    'n16_g2_bf16_L4099': (ScanCase('', 2, 8, 2, 16, 4099, dtype='bf16', out_float=True),
                          None, None),
    'n4_g1_fp16_L3000_multiblock':
        (ScanCase('', 1, 16, 1, 4, 3000, dtype='fp16', with_bias=False), 256, 4),
}


@pytest.mark.gpu
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
