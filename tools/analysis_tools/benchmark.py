#!/usr/bin/env python
"""Inference throughput of an MSVMamba classifier and the share of time in selective_scan.

    python tools/analysis_tools/benchmark.py --arch tiny --batch-size 8 --shape 224 224 \
        [--amp] [--device cpu|cuda] [--warmup 2] [--iters 10] [--threads N]

Prints images/s (median over the timed iterations, after warm-up) and the fraction of the
forward time spent inside ``msvmamba_ops.selective_scan`` (timed in a separate pass with
the scan wrapped by a timer: wall clock on CPU, CUDA events on GPU).
"""
import argparse
import contextlib
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn as nn

# this checkout's code first, whatever else is installed; get_flops sits beside this file
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from get_flops import ArchClassifier  # noqa: E402

from projects.msvmamba import msvmamba as msvmamba_module  # noqa: E402
from projects.msvmamba.msvmamba import MSVMamba  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='tiny', choices=sorted(MSVMamba.arch_zoo))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 on CPU, fp16 on CUDA)')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    return parser.parse_args(argv)


def build_model(args) -> nn.Module:
    return ArchClassifier(args.arch).to(args.device).eval()


def autocast(args):
    if not args.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if args.device == 'cuda' else torch.bfloat16
    return torch.autocast(args.device, dtype=dtype)


def synchronize(device: str):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_iterations(model, inputs, args, iters: int):
    """Seconds per forward for ``iters`` timed forwards after ``args.warmup`` untimed."""
    times = []
    with torch.inference_mode(), autocast(args):
        for i in range(args.warmup + iters):
            synchronize(args.device)
            start = time.perf_counter()
            model(inputs)
            synchronize(args.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    return times


class ScanTimer:
    """Wraps selective_scan and accumulates its run time (CUDA events on GPU, so that the
    wrapped calls are not synchronised one by one)."""

    def __init__(self, scan, device: str):
        self.scan, self.device = scan, device
        self.cpu_seconds, self.events = 0.0, []

    def __call__(self, *args, **kwargs):
        if self.device == 'cuda':
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = self.scan(*args, **kwargs)
            end.record()
            self.events.append((start, end))
            return out
        start = time.perf_counter()
        out = self.scan(*args, **kwargs)
        self.cpu_seconds += time.perf_counter() - start
        return out

    def seconds(self) -> float:
        synchronize(self.device)
        return self.cpu_seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000


def scan_share(model, inputs, args, iters: int) -> float:
    """Fraction of forward time inside selective_scan, over ``iters`` forwards."""
    original = msvmamba_module.selective_scan
    timer = ScanTimer(original, args.device)
    msvmamba_module.selective_scan = timer
    try:
        time_iterations(model, inputs, args, 1)  # warm the wrapped path
        timer.cpu_seconds, timer.events = 0.0, []
        total = sum(time_iterations(model, inputs, argparse.Namespace(**{
            **vars(args), 'warmup': 0}), iters))
        return timer.seconds() / total
    finally:
        msvmamba_module.selective_scan = original


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args)
    inputs = torch.randn(args.batch_size, 3, *args.shape, device=args.device)
    times = time_iterations(model, inputs, args, args.iters)
    median = statistics.median(times)
    share = scan_share(model, inputs, args, max(1, args.iters // 2))
    print(f'arch {args.arch}, batch {args.batch_size}, shape {tuple(args.shape)}, '
          f'device {args.device}, amp {args.amp}, threads {torch.get_num_threads()}')
    print(f'{args.batch_size / median:.2f} img/s (median {median * 1000:.1f} ms per batch over '
          f'{len(times)} iterations, min {min(times) * 1000:.1f} ms)')
    print(f'selective_scan share of forward time: {share * 100:.1f}%')
    return 0


if __name__ == '__main__':
    sys.exit(main())
