"""Shared helpers for the selective-scan tests: inputs, the float64 autograd oracle, and the
backends to parametrise over (each test skips a backend that cannot run here).

Backends and the device they are tested on: 'reference' and 'cpu' on CPU; 'cuda' on a GPU;
'triton' on a GPU, or on CPU when TRITON_INTERPRET=1 is set (the Triton interpreter).
"""
import os
from typing import Dict, Optional

import pytest
import torch

from msvmamba_ops import BACKENDS, backend_unavailable_reason, selective_scan_ref

ARG_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


def backend_device(name: str) -> Optional[str]:
    if name in ('reference', 'cpu'):
        return 'cpu'
    if torch.cuda.is_available():
        return 'cuda'
    if name == 'triton' and os.environ.get('TRITON_INTERPRET') == '1':
        return 'cpu'
    return None


def require_backend(name: str) -> str:
    """The device to test backend ``name`` on; skips the test if it cannot run here."""
    device = backend_device(name)
    if device is None:
        extra = ' or TRITON_INTERPRET=1' if name == 'triton' else ''
        pytest.skip(f'backend {name!r} needs a GPU{extra}')
    reason = backend_unavailable_reason(name, device, build=True)
    if reason is not None:
        pytest.skip(f'backend {name!r} unavailable: {reason}')
    return device


backend_params = pytest.mark.parametrize('backend', BACKENDS)


def make_inputs(bt=2, dim=4, length=16, nstate=1, groups=1, *, softplus=True, with_D=True,
                with_bias=True, dtype=torch.float32, device='cpu', seed=0) -> Dict:
    """Well-conditioned random inputs (decays in (0, 1)) as a dict of ARG_NAMES."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    if softplus:
        delta = randn(bt, dim, length, scale=0.5, shift=-1.0)
    else:
        delta = torch.rand(bt, dim, length, generator=g, dtype=torch.float64) * 0.5 + 0.05
    args = dict(
        u=randn(bt, dim, length), delta=delta,
        A=-(torch.rand(dim, nstate, generator=g, dtype=torch.float64) + 0.5),
        B=randn(bt, groups, nstate, length), C=randn(bt, groups, nstate, length),
        D=randn(dim) if with_D else None,
        delta_bias=randn(dim, scale=0.1) if with_bias else None)
    low = dtype in (torch.float16, torch.bfloat16)
    out = {}
    for k, v in args.items():
        if v is not None:
            # A, D, delta_bias stay float32 for low-precision inputs (the documented policy)
            v = v.to(torch.float32 if low and k in ('A', 'D', 'delta_bias') else dtype)
            v = v.to(device)
        out[k] = v
    return out


def with_grad(args: Dict) -> Dict:
    return {k: None if v is None else v.detach().clone().requires_grad_() for k, v in args.items()}


def grads_of(fn, args: Dict, softplus: bool, dout=None, **kw):
    """(y, [grads of the non-None args]) of fn(**args) under autograd."""
    leaves = with_grad(args)
    y = fn(**leaves, delta_softplus=softplus, **kw)
    if dout is None:
        dout = torch.randn(y.shape, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(y)
    y.backward(dout)
    return y.detach(), [v.grad for v in leaves.values() if v is not None], dout


def oracle(args: Dict, softplus: bool, dout=None):
    """Float64 autograd through selective_scan_ref on CPU: (y, grads, dout)."""
    args64 = {k: None if v is None else v.detach().double().cpu() for k, v in args.items()}
    return grads_of(selective_scan_ref, args64, softplus,
                    None if dout is None else dout.double().cpu())


def assert_rel_close(actual, expected, tol, what=''):
    """max |actual - expected| <= tol * max |expected| (NaN-free inputs)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * max(scale, 1e-12), f'{what}: max error {err:.3g} > {tol} * {scale:.3g}'
