"""Benchmark the fused CPU selective scan against the plain PyTorch paths, in one run.

(a) the 'cpu' backend vs the 'reference' backend, the sequential loop of
    msvmamba_ops/reference.py (one vectorised step per time index over all batch x
    channels; its backward is the explicit reverse-time adjoint loop), forward and backward
    separately (target: >= 20x each);
(b) the 'cpu' backend's forward vs the unfused eager elementwise work alone
    (softplus(delta + delta_bias), exp(delta * A), delta * B * u; no recurrence)
    (target: <= 1x, i.e. the whole fused scan costs no more than its elementwise inputs);
(c) the 'chunked' backend (msvmamba_ops/chunked_scan.py, plain parallel torch ops: what ONNX
    export and devices without a kernel run) against the 'cpu' kernel and the reference
    loop, forward and backward (reported, no target).

Shapes: Bt=2, D=192, N=1 (MSVMamba's case), L=3136 (56x56) and L=67000 (detection scale).
Both paths run through the public ``selective_scan`` (with autograd for the backward).
Medians over repeats; the methods are measured interleaved, so that a change in machine
load hits them alike. Two process settings apply to all methods alike (each unless already
set in the environment): OMP_WAIT_POLICY=PASSIVE, as on a shared machine spinning OpenMP
workers take the CPU from the threads they wait for and make any multi-threaded timing (also
torch's eager ops) erratic; THP_MEM_ALLOC_ENABLE=1 (torch puts large tensors on transparent
huge pages), as in VMs the first-touch page faults of every fresh output tensor can cost more
than the scan itself (about 100 ms for one (2, 192, 67000) float32 tensor here). Usage:

    python tools/analysis_tools/benchmark_scan.py [--lengths 3136 67000] [--repeats 15]
        [--threads N]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# before torch loads libgomp / its allocator reads the variable (see the docstring)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from msvmamba_ops import selective_scan  # noqa: E402
from msvmamba_ops import cpu_scan  # noqa: E402
from msvmamba_ops.testing import make_inputs  # noqa: E402

TARGET_SPEEDUP = 20.0   # (a): reference / cpu, forward and backward
TARGET_ELEMENTWISE = 1.0  # (b): cpu forward / eager elementwise


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_length(length, args, repeats, ref_repeats):
    x = make_inputs(args.batch, args.dim, length, args.nstate)
    dout = torch.randn_like(x['u'])
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}

    def forward(backend):
        with torch.no_grad():
            selective_scan(**x, delta_softplus=True, backend=backend)

    def elementwise():
        with torch.no_grad():
            dt = F.softplus(x['delta'] + x['delta_bias'][:, None])
            torch.exp(dt.unsqueeze(2) * x['A'][None, :, :, None])
            dt.unsqueeze(2) * x['B'] * x['u'].unsqueeze(2)

    def backward(backend):
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        t = timed(lambda: y.backward(dout))
        for v in leaves.values():
            v.grad = None
        return t

    forward('cpu'), elementwise(), backward('cpu')  # warm-up
    times = {k: [] for k in ('cpu_fwd', 'cpu_bwd', 'ref_fwd', 'ref_bwd', 'elem', 'chunked_fwd',
                             'chunked_bwd')}
    for i in range(repeats):
        times['cpu_fwd'].append(timed(lambda: forward('cpu')))
        times['elem'].append(timed(elementwise))
        times['cpu_bwd'].append(backward('cpu'))
        times['chunked_fwd'].append(timed(lambda: forward('chunked')))
        times['chunked_bwd'].append(backward('chunked'))
        if i < ref_repeats:
            times['ref_fwd'].append(timed(lambda: forward('reference')))
            times['ref_bwd'].append(backward('reference'))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--lengths', type=int, nargs='+', default=[3136, 67000])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dim', type=int, default=192)
    parser.add_argument('--nstate', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=15,
                        help='repeats of the fast paths (and of the reference at short L)')
    parser.add_argument('--long-ref-repeats', type=int, default=5,
                        help='repeats of the (slow) reference loop when L > 10000')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: torch\'s default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reason = cpu_scan.unavailable_reason(build=True)
    if reason is not None:
        sys.exit(f'the cpu backend is unavailable: {reason}')
    print(f'selective scan, CPU: Bt={args.batch} D={args.dim} N={args.nstate}, softplus, '
          f'with D and delta_bias; torch {torch.__version__}, {torch.get_num_threads()} '
          f'threads, kernel ISA {cpu_scan.isa()}, {os.cpu_count()} CPUs, '
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}; medians")
    rows = []
    for length in args.lengths:
        ref_repeats = args.long_ref_repeats if length > 10000 else args.repeats
        t = bench_length(length, args, args.repeats, min(ref_repeats, args.repeats))
        rows += [
            (length, '(a) forward: reference / cpu', t['ref_fwd'], t['cpu_fwd'],
             t['ref_fwd'] / t['cpu_fwd'], f'>= {TARGET_SPEEDUP:g}x',
             t['ref_fwd'] / t['cpu_fwd'] >= TARGET_SPEEDUP),
            (length, '(a) backward: reference / cpu', t['ref_bwd'], t['cpu_bwd'],
             t['ref_bwd'] / t['cpu_bwd'], f'>= {TARGET_SPEEDUP:g}x',
             t['ref_bwd'] / t['cpu_bwd'] >= TARGET_SPEEDUP),
            (length, '(b) cpu forward / eager elementwise', t['elem'], t['cpu_fwd'],
             t['cpu_fwd'] / t['elem'], f'<= {TARGET_ELEMENTWISE:g}x',
             t['cpu_fwd'] / t['elem'] <= TARGET_ELEMENTWISE),
        ]
        for step in ('fwd', 'bwd'):  # (c): reported only (ok None)
            what = 'forward' if step == 'fwd' else 'backward'
            rows += [(length, f'(c) {what}: chunked / cpu', t[f'chunked_{step}'],
                      t[f'cpu_{step}'], t[f'chunked_{step}'] / t[f'cpu_{step}'], '-', None),
                     (length, f'(c) {what}: reference / chunked', t[f'ref_{step}'],
                      t[f'chunked_{step}'], t[f'ref_{step}'] / t[f'chunked_{step}'], '-', None)]
    header = ('L', 'measurement', 'other (ms)', 'cpu (ms)', 'ratio', 'target', 'result')
    fmt = '{:>6} | {:<36} | {:>11} | {:>9} | {:>8} | {:>7} | {}'
    print(fmt.format(*header))
    print('-' * 100)
    for length, what, other, cpu, ratio, target, ok in rows:
        print(fmt.format(length, what, f'{other:.2f}', f'{cpu:.2f}', f'{ratio:.2f}x', target,
                         'info' if ok is None else 'PASS' if ok else 'FAIL'))
    failed = sum(r[-1] is False for r in rows)
    targets = sum(r[-1] is not None for r in rows)
    print(f'{targets - failed}/{targets} targets met (load average at the end: '
          f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
