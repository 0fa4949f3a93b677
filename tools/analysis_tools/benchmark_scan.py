#!/usr/bin/env python
"""Benchmark the selective scan backends, in one run.

On the CPU (default), as ratios: (a) the fused 'cpu' backend vs the 'reference' loop,
forward and backward (target: >= 20x each); (b) the 'cpu' forward vs the unfused eager
elementwise work alone (softplus, exp(delta * A), delta * B * u; target: <= 1x); (c) the
'chunked' backend (what ONNX export and devices without a kernel run) against both
(reported, no target). Shapes: Bt=2, D=192, N=1 (MSVMamba's case), L=3136 (56x56) and
L=67000 (detection scale).

With ``--device cuda``: each GPU backend (``--backends cuda,triton``) at the MSVMamba-Tiny
scan shapes for ``--batch`` (default 128) images at 224x224, forward and backward median
times and GB/s against a device-to-device copy, as a markdown table.

Medians over repeats; the methods are measured interleaved (one timer for all benchmark
tools: projects/msvmamba_mm/timing.py; the implementation: projects/msvmamba_mm/
scan_speed.py). Two process settings apply to all methods alike (each unless already set in
the environment): OMP_WAIT_POLICY=PASSIVE, as on a shared machine spinning OpenMP workers
take the CPU from the threads they wait for and make any multi-threaded timing (also
torch's eager ops) erratic; THP_MEM_ALLOC_ENABLE=1 (torch puts large tensors on transparent
huge pages), as in VMs the first-touch page faults of every fresh output tensor can cost more
than the scan itself (about 100 ms for one (2, 192, 67000) float32 tensor here). Usage:

    python tools/analysis_tools/benchmark_scan.py [--lengths 3136 67000] [--repeats 15]
        [--threads N]
    python tools/analysis_tools/benchmark_scan.py --device cuda [--backends cuda,triton]
        [--batch 128] [--dtypes fp32,bf16] [--repeats 30]
"""
import argparse
import os
import sys

# before torch loads libgomp / its allocator reads the variable (see the docstring)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import torch  # noqa: E402

from msvmamba_ops import cpu_scan  # noqa: E402
from msvmamba_ops.scan import backend_unavailable_reason  # noqa: E402
from msvmamba_ops.testing import TINY_STAGES  # noqa: E402
from projects.msvmamba_mm.scan_speed import cpu_rows, gpu_rows  # noqa: E402
from projects.msvmamba_mm.timing import copy_bandwidth_gbs, machine_load  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--lengths', type=int, nargs='+', default=[3136, 67000],
                        help='CPU: sequence lengths')
    parser.add_argument('--batch', type=int, default=None,
                        help='Bt (CPU, default 2) or images (cuda, default 128)')
    parser.add_argument('--dim', type=int, default=192, help='CPU: channels D')
    parser.add_argument('--nstate', type=int, default=1, help='CPU: N')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed repeats (default 15 on the CPU, 30 on cuda)')
    parser.add_argument('--long-ref-repeats', type=int, default=5,
                        help='repeats of the (slow) reference loop when L > 10000')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: torch\'s default)')
    parser.add_argument('--backends', default='cuda,triton', help='cuda: backends to time')
    parser.add_argument('--dtypes', default='fp32,bf16', help='cuda: dtypes to time')
    return parser.parse_args(argv)


def cpu_main(args) -> int:
    reason = backend_unavailable_reason('cpu', 'cpu', build=True)
    if reason is not None:
        sys.exit(f'the cpu backend is unavailable: {reason}')
    print(f'selective scan, CPU: Bt={args.batch or 2} D={args.dim} N={args.nstate}, softplus, '
          f'with D and delta_bias; torch {torch.__version__}, {torch.get_num_threads()} '
          f'threads, kernel ISA {cpu_scan.isa()}, {os.cpu_count()} CPUs, '
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}; medians")
    rows = cpu_rows(args.lengths, args.batch or 2, args.dim, args.nstate, args.repeats or 15,
                    args.long_ref_repeats)
    fmt = '{:>6} | {:<36} | {:>11} | {:>9} | {:>8} | {:>7} | {}'
    print(fmt.format('L', 'measurement', 'other (ms)', 'cpu (ms)', 'ratio', 'target', 'result'))
    print('-' * 100)
    for length, what, other, cpu, ratio, target, ok in rows:
        print(fmt.format(length, what, f'{other:.2f}', f'{cpu:.2f}', f'{ratio:.2f}x', target,
                         'info' if ok is None else 'PASS' if ok else 'FAIL'))
    failed = sum(r[-1] is False for r in rows)
    targets = sum(r[-1] is not None for r in rows)
    print(f'{targets - failed}/{targets} targets met ({machine_load()} at the end)')
    return 1 if failed else 0


def cuda_main(args) -> int:
    if not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device visible')
    batch = args.batch or 128
    copy = copy_bandwidth_gbs('cuda', 1 << 30)
    rows = gpu_rows(args.backends.split(','), batch, TINY_STAGES, args.dtypes.split(','),
                    args.repeats or 30)
    print(f'selective scan on {torch.cuda.get_device_name()}: MSVMamba-Tiny shapes, batch '
          f'{batch} at 224x224, N = 1, softplus; median ms; GB/s = bytes moved once / time '
          f'(% of a device-to-device copy at {copy:.0f} GB/s)\n')
    print('| stage | branch | E | L | dtype | backend | fwd ms | fwd GB/s | bwd ms | bwd GB/s '
          '| note |\n|' + '---|' * 11)
    for r in rows:
        cells = [r['stage'], r['branch'], r['dim'], r['length'], r['dtype'], r['backend']]
        for step in ('fwd', 'bwd'):
            if f'{step}_ms' in r:
                cells += [f'{r[f"{step}_ms"]:.3f}',
                          f'{r[f"{step}_gbs"]:.0f} ({100 * r[f"{step}_gbs"] / copy:.0f}%)']
            else:
                cells += ['-', '-']
        print('| ' + ' | '.join(str(c) for c in cells + [r.get('note', '')]) + ' |')
    return 1 if any('note' in r for r in rows) else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return cuda_main(args) if args.device == 'cuda' else cpu_main(args)


if __name__ == '__main__':
    sys.exit(main())
