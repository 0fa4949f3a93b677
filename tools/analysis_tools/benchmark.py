#!/usr/bin/env python
"""Inference throughput and peak memory of an MSVMamba model (a config's model or a
classifier by arch) and the share of time in selective_scan.

    python tools/analysis_tools/benchmark.py [CONFIG] [--cfg-options k=v ...] \
        [--arch tiny] [--batch-size 8] [--shape 224 224] \
        [--amp] [--device cpu|cuda] [--warmup 2] [--iters 20] [--threads N] \
        [--stub-scan] [--compare-unfused] [--compare-amp] [--train] [--scan-backend NAME]

With CONFIG, the config's model runs its 'tensor' forward (detectors, which need data
samples for that, run backbone + neck: ``extract_feat``); without, an ImageNet classifier
of ``--arch``. Prints images/s (median over the timed iterations, after warm-up), peak
memory (CUDA: peak allocated by torch; CPU: the process's peak resident set), the
selective-scan backend in use and the fraction of the forward time spent inside the scan
(timed in a separate pass with the scan wrapped by a timer: wall clock on CPU, CUDA events on
GPU). In eval on float32 CPU tensors the backbone runs each token mixer's branches as one
fused op (``msvmamba_ops.cpu_fused``: depthwise conv, x/dt projections, scan, out_norm,
direction merge, gate), which contains the scan; its share is reported as such. Set
MSVMAMBA_FUSED_CPU=0 to time the unfused ops and see the scan's own share. On CPU it also
prints the page faults per forward (fresh memory the allocator had to map).

``--compare-amp`` times float32 and autocast (bf16 on CPU) inference alternating in this
process and prints ``bf16 vs fp32: N.NNx (A vs B img/s), logits rel err E`` with
E = max |bf16 - fp32| / max |fp32| over the batch, and the top-5 overlap of classifier
logits. Under bf16 autocast the fused CPU ops stay on where the CPU has avx512_bf16 or AMX.

``--train`` times training steps instead (forward, mean of the outputs as the loss,
backward, AdamW step); ``--scan-backend`` routes the scan to one backend
(``MSVMAMBA_SCAN_BACKEND``), e.g. ``cuda`` or ``triton`` with ``--device cuda``.

On a shared machine compare variants by running them in one process, alternating, rather
than across runs: the load changes from minute to minute. The implementation is
projects/msvmamba_mm/speed.py (the timer: projects/msvmamba_mm/timing.py).
"""
import argparse
import contextlib
import sys

import torch
from mmengine.config import DictAction

from msvmamba_ops import BACKENDS, resolve_backend
from projects.msvmamba.msvmamba import MSVMamba
from projects.msvmamba_mm.cli import run_main
from projects.msvmamba_mm.speed import (benchmark_model, build_model, report, scan_backend,
                                        stubbed_scan)
from projects.msvmamba_mm.timing import machine_load


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?', help='config file (default: a classifier of --arch)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings, as in tools/train.py')
    parser.add_argument('--arch', default='tiny', choices=sorted(MSVMamba.arch_zoo))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 on CPU, fp16 on CUDA)')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=20,
                        help='timed forwards (the median is reported; more steady it on a '
                        'loaded machine)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--compare-unfused', action='store_true',
                        help='CPU: also time the unfused modules (MSVMAMBA_FUSED_CPU=0), '
                        'alternating with the fused ops forward by forward, and print the ratio')
    parser.add_argument('--compare-amp', action='store_true',
                        help='also time float32 against autocast inference (bf16 on CPU), '
                        'alternating, and print the speed ratio, the logits relative error '
                        'and the top-5 overlap')
    parser.add_argument('--stub-scan', action='store_true',
                        help='replace selective_scan by a copy of u: times the rest of the '
                        'network (e.g. while only the slow reference scan is available)')
    parser.add_argument('--train', action='store_true',
                        help='time training steps (forward, backward, AdamW step) instead '
                        'of inference forwards')
    parser.add_argument('--scan-backend', choices=BACKENDS,
                        help='selective-scan backend (default: chosen by the device)')
    return parser.parse_args(argv)


def run(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with scan_backend(args.scan_backend), \
            stubbed_scan() if args.stub_scan else contextlib.nullcontext():
        backend = ('stub (copy of u)' if args.stub_scan
                   else resolve_backend(args.device, torch.float32))
        torch.manual_seed(0)
        model = build_model(args.config, args.arch, args.device, args.cfg_options)
        inputs = torch.randn(args.batch_size, 3, *args.shape, device=args.device)
        result = benchmark_model(
            model, inputs, args.iters, args.warmup, args.device, args.amp, args.train,
            args.compare_unfused and not args.stub_scan, compare_amp=args.compare_amp)
    print(f'{args.config or f"arch {args.arch}"}, batch {args.batch_size}, shape '
          f'{tuple(args.shape)}, device {args.device}, amp {args.amp}, '
          f'{"training" if args.train else "inference"}, threads {torch.get_num_threads()}, '
          f'scan backend {backend}; {machine_load()}')
    print('\n'.join(report(result, args.batch_size, args.device)))


def main(argv=None) -> int:
    """``run`` with a config's errors as one ``error:`` line and exit status 2."""
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
