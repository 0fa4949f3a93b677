#!/usr/bin/env python
"""Inference throughput and peak memory of an MSVMamba model (a config's model or a
classifier by arch) and the share of time in selective_scan.

    python tools/analysis_tools/benchmark.py [CONFIG] [--cfg-options k=v ...] \
        [--arch tiny] [--batch-size 8] [--shape 224 224] \
        [--amp] [--device cpu|cuda] [--warmup 2] [--iters 20] [--threads N] \
        [--stub-scan] [--compare-unfused]

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

On a shared machine compare variants by running them in one process, alternating, rather
than across runs: the load changes from minute to minute.
"""
import argparse
import contextlib
import gc
import os
import os.path as osp
import statistics
import sys
import time
from typing import Tuple

import torch
import torch.nn as nn

# this checkout's code first, whatever else is installed; get_flops sits beside this file
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from get_flops import ArchClassifier, TensorForward, build_from_config  # noqa: E402

from mmengine.config import DictAction  # noqa: E402

from msvmamba_ops import cpu_fused, resolve_backend  # noqa: E402
from projects.msvmamba import msvmamba as msvmamba_module  # noqa: E402
from projects.msvmamba.msvmamba import MSVMamba  # noqa: E402
from projects.msvmamba_mm.cli import run_main  # noqa: E402


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
    parser.add_argument('--stub-scan', action='store_true',
                        help='replace selective_scan by a copy of u: times the rest of the '
                        'network (e.g. while only the slow reference scan is available)')
    return parser.parse_args(argv)


def build_model(args) -> nn.Module:
    if not args.config:
        return ArchClassifier(args.arch).to(args.device).eval()
    model = build_from_config(args.config, args.cfg_options).to(args.device).eval()
    inputs = torch.randn(1, 3, 64, 64, device=args.device)
    try:  # classifiers and segmentors: the whole network
        with torch.inference_mode():
            model(inputs, mode='tensor')
        return TensorForward(model, lambda m, x: m(x, mode='tensor'))
    except Exception:  # two-stage detectors need data samples: backbone + neck
        return TensorForward(model, lambda m, x: m.extract_feat(x))


def peak_memory_mib(device: str) -> float:
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def autocast(args):
    if not args.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if args.device == 'cuda' else torch.bfloat16
    return torch.autocast(args.device, dtype=dtype)


def synchronize(device: str):
    if device == 'cuda':
        torch.cuda.synchronize()


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off while timing, as ``timeit`` does: otherwise the
    tensors a forward creates trigger collections that walk every object the imports made
    (a few percent of a CPU forward), which times the interpreter, not the model."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_iterations(model, inputs, args, iters: int):
    """Seconds per forward for ``iters`` timed forwards after ``args.warmup`` untimed."""
    times = []
    with torch.inference_mode(), autocast(args), gc_paused():
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


def scan_share(model, inputs, args, iters: int) -> Tuple[float, float]:
    """Fractions of forward time inside selective_scan and inside the fused CPU token-mixer
    op (msvmamba_ops.cpu_fused.ms2d_branch), over ``iters`` forwards."""
    timers = {'scan': ScanTimer(msvmamba_module.selective_scan, args.device),
              'fused': ScanTimer(cpu_fused.ms2d_branch, args.device)}
    msvmamba_module.selective_scan, cpu_fused.ms2d_branch = timers['scan'], timers['fused']
    try:
        time_iterations(model, inputs, args, 1)  # warm the wrapped path
        for timer in timers.values():
            timer.cpu_seconds, timer.events = 0.0, []
        total = sum(time_iterations(model, inputs, argparse.Namespace(**{
            **vars(args), 'warmup': 0}), iters))
        return timers['scan'].seconds() / total, timers['fused'].seconds() / total
    finally:
        msvmamba_module.selective_scan = timers['scan'].scan
        cpu_fused.ms2d_branch = timers['fused'].scan


@contextlib.contextmanager
def fused_ops(enabled: bool):
    """The fused CPU ops on or off (MSVMAMBA_FUSED_CPU) inside the block."""
    saved = os.environ.get(cpu_fused.ENV_FUSED)
    os.environ[cpu_fused.ENV_FUSED] = '1' if enabled else '0'
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(cpu_fused.ENV_FUSED, None)
        else:
            os.environ[cpu_fused.ENV_FUSED] = saved


def compare_unfused(model, inputs, args) -> Tuple[float, float]:
    """Median seconds per forward with the fused ops and without, the two alternating
    forward by forward in this process (so that both see the same machine load)."""
    fused, unfused = [], []
    one = argparse.Namespace(**{**vars(args), 'warmup': 0})
    for i in range(args.warmup + args.iters):
        for enabled, times in ((True, fused), (False, unfused)):
            with fused_ops(enabled):
                t = time_iterations(model, inputs, one, 1)
            if i >= args.warmup:
                times.extend(t)
    return statistics.median(fused), statistics.median(unfused)


def matmul_gflops(device: str, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul (best of ``repeats``): a yardstick of how fast
    the machine runs right now, printed beside the model's figures."""
    a = torch.randn(n, n, device=device)
    best = float('inf')
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def page_faults() -> int:
    """Minor page faults of this process so far (CPU: the cost of fresh memory)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def stub_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
              out_float=False, backend=None):
    """Stand-in for selective_scan with its output shape and dtype, at the cost of a copy."""
    return u.to(torch.float32 if out_float else u.dtype, copy=True)


def run(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    original_scan = msvmamba_module.selective_scan
    if args.stub_scan:
        msvmamba_module.selective_scan = stub_scan
        backend = 'stub (copy of u)'
    else:
        backend = resolve_backend(args.device, torch.float32)
    comparison = None
    # the fused ops contain their own scan: off with --stub-scan
    with fused_ops(False) if args.stub_scan else contextlib.nullcontext():
        try:
            torch.manual_seed(0)
            model = build_model(args)
            inputs = torch.randn(args.batch_size, 3, *args.shape, device=args.device)
            yardstick = [matmul_gflops(args.device)]
            faults = page_faults()
            times = time_iterations(model, inputs, args, args.iters)
            faults = (page_faults() - faults) / (args.warmup + args.iters)
            yardstick.append(matmul_gflops(args.device))
            share, fused_share = scan_share(model, inputs, args, max(1, args.iters // 2))
            if args.compare_unfused and args.device == 'cpu' and not args.stub_scan:
                comparison = compare_unfused(model, inputs, args)
        finally:
            msvmamba_module.selective_scan = original_scan
    median = statistics.median(times)
    what = args.config or f'arch {args.arch}'
    print(f'{what}, batch {args.batch_size}, shape {tuple(args.shape)}, '
          f'device {args.device}, amp {args.amp}, threads {torch.get_num_threads()}, '
          f'scan backend {backend}')
    print(f'{args.batch_size / median:.2f} img/s (median {median * 1000:.1f} ms per batch over '
          f'{len(times)} iterations, min {min(times) * 1000:.1f} ms)')
    print(f'peak memory: {peak_memory_mib(args.device):.0f} MiB '
          f'({"torch max allocated" if args.device == "cuda" else "process peak RSS"})')
    if args.device == 'cpu':
        print(f'page faults per forward: {faults:.0f}')
    print(f'machine yardstick: 1024x1024 float32 matmul at {yardstick[0]:.0f} GFLOP/s before '
          f'and {yardstick[1]:.0f} after the timed forwards')
    if fused_share > 0:
        print('fused token-mixer op (depthwise convs, x/dt projections, selective scan, '
              f'out_norm, merge, gate) share of forward time: {fused_share * 100:.1f}%')
    print(f'selective_scan share of forward time (calls outside the fused op): {share * 100:.1f}%')
    if comparison:
        fused_t, unfused_t = comparison
        print(f'fused vs unfused ops, alternating in this process: {unfused_t / fused_t:.2f}x '
              f'({args.batch_size / fused_t:.2f} vs {args.batch_size / unfused_t:.2f} img/s)')


def main(argv=None) -> int:
    """``run`` with a config's errors as one ``error:`` line and exit status 2."""
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
