"""Speed of the selective scan alone (``tools/analysis_tools/benchmark_scan.py``).

On the CPU (:func:`cpu_rows`), as ratios measured in one run:

(a) the 'cpu' backend vs the 'reference' backend (the sequential loop of
    msvmamba_ops/reference.py), forward and backward (target: >= 20x each);
(b) the 'cpu' backend's forward vs the unfused eager elementwise work alone
    (softplus(delta + delta_bias), exp(delta * A), delta * B * u; no recurrence)
    (target: <= 1x);
(c) the 'chunked' backend (plain parallel torch ops: what ONNX export and devices without
    a kernel run) against the 'cpu' kernel and the reference loop (reported, no target).

On a GPU (:func:`gpu_rows`): each GPU backend's forward and backward at the MSVMamba-Tiny
scan shapes (``msvmamba_ops.testing.TINY_STAGES``), median time and the achieved GB/s
(bytes of the tensors read and written once) against a device-to-device copy.

Every method runs through the public ``selective_scan`` (the backward through autograd,
timed alone), timed by :func:`.timing.time_alternating`, the methods interleaved.

Public API: :func:`cpu_rows`, :func:`gpu_rows`, :func:`scan_bytes`, :data:`TARGET_SPEEDUP`,
:data:`TARGET_ELEMENTWISE`.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from msvmamba_ops import selective_scan
from msvmamba_ops.testing import DTYPES, make_dout, make_inputs

from . import timing

TARGET_SPEEDUP = 20.0   # (a): reference / cpu, forward and backward
TARGET_ELEMENTWISE = 1.0  # (b): cpu forward / eager elementwise


def _methods(x: Dict, backends: Sequence[str]) -> Dict[str, object]:
    """``{'<backend> fwd': ..., '<backend> bwd': ...}``: the public ``selective_scan``
    without autograd, and its autograd backward (one recorded forward, its graph kept, so
    that the backward alone is timed)."""
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in x.items()}
    inputs = [v for v in leaves.values() if v is not None]
    dout = make_dout(x['u'])
    methods = {}
    for backend in backends:
        def forward(backend=backend):
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend=backend)
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        methods[f'{backend} fwd'] = forward
        methods[f'{backend} bwd'] = lambda y=y: torch.autograd.grad(y, inputs, dout,
                                                                    retain_graph=True)
    return methods


def _median_ms(times: Dict[str, List[float]]) -> Dict[str, float]:
    return {k: timing.median(v) * 1e3 for k, v in times.items()}


def cpu_rows(lengths: Sequence[int], batch: int = 2, dim: int = 192, nstate: int = 1,
             repeats: int = 15, long_ref_repeats: int = 5) -> List[tuple]:
    """Rows ``(L, measurement, other ms, cpu ms, ratio, target, ok)`` of (a), (b), (c);
    ``ok`` is None for the reported-only rows. The reference loop runs ``long_ref_repeats``
    times when L > 10,000 (it takes seconds there)."""
    rows = []
    for length in lengths:
        x = make_inputs(batch, dim, length, nstate)
        methods = _methods(x, ('cpu', 'chunked'))

        def elementwise():
            with torch.no_grad():
                dt = F.softplus(x['delta'] + x['delta_bias'][:, None])
                torch.exp(dt.unsqueeze(2) * x['A'][None, :, :, None])
                dt.unsqueeze(2) * x['B'] * x['u'].unsqueeze(2)
        methods['elementwise'] = elementwise
        t = _median_ms(timing.time_alternating(methods, repeats, warmup=1))
        ref_repeats = min(repeats, long_ref_repeats if length > 10000 else repeats)
        t.update(_median_ms(timing.time_alternating(_methods(x, ('reference', )),
                                                    ref_repeats, warmup=0)))
        for step, what in (('fwd', 'forward'), ('bwd', 'backward')):
            ratio = t[f'reference {step}'] / t[f'cpu {step}']
            rows.append((length, f'(a) {what}: reference / cpu', t[f'reference {step}'],
                         t[f'cpu {step}'], ratio, f'>= {TARGET_SPEEDUP:g}x',
                         ratio >= TARGET_SPEEDUP))
        ratio = t['cpu fwd'] / t['elementwise']
        rows.append((length, '(b) cpu forward / eager elementwise', t['elementwise'],
                     t['cpu fwd'], ratio, f'<= {TARGET_ELEMENTWISE:g}x',
                     ratio <= TARGET_ELEMENTWISE))
        for step, what in (('fwd', 'forward'), ('bwd', 'backward')):
            chunked, cpu, ref = (t[f'{b} {step}'] for b in ('chunked', 'cpu', 'reference'))
            rows += [(length, f'(c) {what}: chunked / cpu', chunked, cpu, chunked / cpu,
                      '-', None),
                     (length, f'(c) {what}: reference / chunked', ref, chunked, ref / chunked,
                      '-', None)]
    return rows


def scan_bytes(batch: int, dim: int, length: int, dtype: torch.dtype, backward: bool) -> int:
    """Bytes of the scan's tensors, each read or written once (N = 1, G = 1)."""
    e = torch.tensor([], dtype=dtype).element_size()
    big, bc, params = batch * dim * length * e, batch * length * e, 3 * dim * 4
    if not backward:  # u, delta, B, C in; out
        return 3 * big + 2 * bc + params
    return 5 * big + 4 * bc + 2 * params  # u, delta, dout, B, C in; du, ddelta, dB, dC out


def gpu_rows(backends: Sequence[str], batch: int, stages, dtypes: Sequence[str],
             iters: int = 30) -> List[dict]:
    """One row per (dtype, stage, branch) of the Tiny scan shapes ``stages`` ((stage, E,
    full-res L, low-res L) each) and backend: ``dict(stage, branch, dim, length, dtype,
    backend, fwd_ms, bwd_ms, fwd_gbs, bwd_gbs)``, or ``note`` with the error of a backend
    that failed there."""
    rows = []
    for dname in dtypes:
        for stage, dim, l_full, l_low in stages:
            for branch, length in (('full-res', l_full), ('low-res', l_low)):
                x = make_inputs(batch, dim, length, 1, dtype=DTYPES[dname], device='cuda')
                for backend in backends:
                    row = dict(stage=stage, branch=branch, dim=dim, length=length,
                               dtype=dname, backend=backend)
                    try:
                        t = _median_ms(timing.time_alternating(
                            _methods(x, (backend, )), iters, warmup=3, device='cuda'))
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        row['note'] = f'error: {type(exc).__name__}: {exc}'[:200]
                        rows.append(row)
                        continue
                    for step in ('fwd', 'bwd'):
                        ms = t[f'{backend} {step}']
                        nbytes = scan_bytes(batch, dim, length, DTYPES[dname], step == 'bwd')
                        row[f'{step}_ms'], row[f'{step}_gbs'] = ms, nbytes / (ms * 1e-3) / 1e9
                    rows.append(row)
                del x
    return rows
