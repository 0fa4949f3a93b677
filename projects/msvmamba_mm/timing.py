"""The one timer of the benchmark tools, and the machine and memory figures printed beside
their results.

Every timing of ``tools/analysis_tools/benchmark.py``, ``benchmark_onnx.py`` and
``benchmark_scan.py`` (CPU and CUDA) goes through :func:`time_alternating`: the methods
compared are called in turn, one timed call each per round, so that a change in machine
load hits them alike, with Python's cyclic garbage collector paused and, on CUDA, each
call timed with CUDA events. Methods on different runtimes (PyTorch, ONNX Runtime) are
timed settled (``settle=1``): only a call that follows a call of the same method counts. Compare variants in one process, alternating, rather than across
runs: on a shared machine the load changes from minute to minute.

Public API: :func:`time_alternating`, :func:`time_calls`, :func:`median`,
:class:`CallTimer`, :func:`gc_paused`, :func:`synchronize`, :func:`peak_memory_mib`,
:func:`reset_peak_memory`, :func:`page_faults`, :func:`matmul_gflops`,
:func:`copy_bandwidth_gbs`, :func:`machine_load`.
"""
import contextlib
import gc
import os
import statistics
import time
from typing import Callable, Dict, List, Mapping

import torch

__all__ = ['time_alternating', 'time_calls', 'median', 'CallTimer', 'gc_paused', 'synchronize',
           'peak_memory_mib', 'reset_peak_memory', 'page_faults', 'matmul_gflops',
           'copy_bandwidth_gbs', 'machine_load']


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if str(device).startswith('cuda'):
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


def _timed_call(fn: Callable[[], object], device: str) -> float:
    """Seconds of one ``fn()``: CUDA events around it on a GPU (the call's queued work
    included), the wall clock on the CPU."""
    if str(device).startswith('cuda'):
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_alternating(methods: Mapping[str, Callable[[], object]], iters: int,
                     warmup: int = 2, device: str = 'cpu',
                     settle: int = 0) -> Dict[str, List[float]]:
    """Seconds per call of each of ``methods`` (name -> callable without arguments):
    ``warmup + iters`` rounds, each calling every method in the given order; the first
    ``warmup`` rounds are not recorded. ``settle``: each method is first called that many
    times untimed in every round, so that the timed call follows a call of the same method.
    Use it when the methods run on different runtimes: a runtime's idle worker threads
    spin-wait for a while after each call (ONNX Runtime's intra-op pool burns about 20 ms
    of CPU after a run of MSVMamba-Tiny), and on a 2-core machine that spinning slows
    whatever runs next; a settled call sees only its own runtime, as a run of that method
    alone would."""
    times: Dict[str, List[float]] = {name: [] for name in methods}
    synchronize(device)
    with gc_paused():
        for i in range(warmup + iters):
            for name, fn in methods.items():
                for _ in range(settle):
                    fn()
                seconds = _timed_call(fn, device)
                if i >= warmup:
                    times[name].append(seconds)
    return times


def time_calls(fn: Callable[[], object], iters: int, warmup: int = 2,
               device: str = 'cpu') -> List[float]:
    """Seconds of each of ``iters`` calls of ``fn()`` after ``warmup`` untimed ones."""
    return time_alternating({'': fn}, iters, warmup, device)['']


def median(times: List[float]) -> float:
    return statistics.median(times)


class CallTimer:
    """Stands in for a function and adds up the time of its calls (CUDA events on a GPU,
    so that the wrapped calls are not synchronised one by one): wrap a module attribute
    with it to learn the share of a forward spent in that function."""

    def __init__(self, fn: Callable, device: str = 'cpu'):
        self.fn, self.device = fn, str(device)
        self.reset()

    def reset(self) -> None:
        self.cpu_seconds, self.events = 0.0, []

    def __call__(self, *args, **kwargs):
        if self.device.startswith('cuda'):
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = self.fn(*args, **kwargs)
            end.record()
            self.events.append((start, end))
            return out
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.cpu_seconds += time.perf_counter() - start
        return out

    def seconds(self) -> float:
        synchronize(self.device)
        return self.cpu_seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000


def reset_peak_memory(device: str) -> None:
    """Start a new CUDA peak (the CPU figure is the process's peak so far)."""
    if str(device).startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """CUDA: the peak torch allocated since :func:`reset_peak_memory`; CPU: the process's
    peak resident set."""
    if str(device).startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def page_faults() -> int:
    """Minor page faults of this process so far (CPU: the cost of fresh memory)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def matmul_gflops(device: str, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul (the best of ``repeats``): a yardstick of how
    fast the machine runs right now, printed beside a model's figures."""
    a = torch.randn(n, n, device=device)
    best = min(time_calls(lambda: a @ a, repeats, warmup=1, device=device))
    return 2 * n**3 / best / 1e9


def copy_bandwidth_gbs(device: str, nbytes: int) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (bytes read + written; median)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    seconds = median(time_calls(lambda: dst.copy_(src), 20, warmup=3, device=device))
    return 2 * nbytes / seconds / 1e9


def machine_load() -> str:
    """``'load average X on N CPUs, OMP_WAIT_POLICY=...'``: print it with every figure. On
    a shared machine the load moves PyTorch's CPU times most: with libgomp's default wait
    policy its OpenMP workers spin at every barrier and wait for a descheduled peer (at a
    load average of 7.7 on 2 cores a Tiny batch-1 forward took 1378 ms by default and 236 ms
    with ``OMP_WAIT_POLICY=PASSIVE``, 2026-12-07)."""
    load, cpus, policy = os.getloadavg()[0], os.cpu_count(), os.environ.get('OMP_WAIT_POLICY')
    line = f'load average {load:.1f} on {cpus} CPUs, OMP_WAIT_POLICY={policy or "unset"}'
    if load > cpus and not policy:
        line += (' (a busy machine: PyTorch CPU times will be inflated by spinning OpenMP '
                 'workers; OMP_WAIT_POLICY=PASSIVE for every tool compared keeps them usable)')
    return line
