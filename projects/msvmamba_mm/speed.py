"""Speed of an MSVMamba model: throughput, peak memory and where the forward spends its
time (``tools/analysis_tools/benchmark.py``), and the PyTorch paths against exported
files in ONNX Runtime / OpenVINO (``tools/analysis_tools/benchmark_onnx.py``).

All timings go through :func:`.timing.time_alternating`. In eval on float32 CPU tensors
the backbone runs each token mixer's branches as one fused op (``msvmamba_ops.cpu_fused``:
depthwise conv, x/dt projections, scan, out_norm, direction merge, gate), which contains
the scan; :func:`fused_ops` turns those ops on or off (``MSVMAMBA_FUSED_CPU``).

Public API: :func:`build_model`, :func:`forward_step`, :func:`benchmark_model`, :func:`report`,
:func:`amp_agreement`, :func:`amp_comparison`, :func:`amp_report`,
:func:`fused_ops`, :func:`scan_backend`, :func:`stubbed_scan`, :func:`scan_share`,
:func:`compare_runtimes`, :func:`runtime_report`.
"""
import contextlib
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from msvmamba_ops import ENV_BACKEND, cpu_fused
from msvmamba_ops.testing import rel_error
from projects.msvmamba import msvmamba as msvmamba_module

from . import timing
from .amp_inference import amp_dtype
from .analysis import ArchClassifier, build_from_config, tensor_forward


@contextlib.contextmanager
def _env(name: str, value: Optional[str]):
    """``os.environ[name] = value`` inside the block (None: unchanged), restored after."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def fused_ops(enabled: bool):
    """The fused CPU ops on or off (``MSVMAMBA_FUSED_CPU``) inside the block."""
    return _env(cpu_fused.ENV_FUSED, '1' if enabled else '0')


def scan_backend(name: Optional[str]):
    """``msvmamba_ops.selective_scan`` routed to backend ``name`` (``MSVMAMBA_SCAN_BACKEND``)
    inside the block; None leaves the choice to the tensors' device."""
    return _env(ENV_BACKEND, name)


def _stub_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False,
               out_float=False, backend=None):
    """Stand-in for selective_scan with its output shape and dtype, at the cost of a copy."""
    return u.to(torch.float32 if out_float else u.dtype, copy=True)


@contextlib.contextmanager
def stubbed_scan():
    """Inside the block the backbone's selective_scan is a copy of ``u`` (and the fused
    ops, which contain their own scan, are off): times the rest of the network."""
    original = msvmamba_module.selective_scan
    msvmamba_module.selective_scan = _stub_scan
    try:
        with fused_ops(False):
            yield
    finally:
        msvmamba_module.selective_scan = original


def build_model(config: Optional[str] = None, arch: str = 'tiny', device: str = 'cpu',
                cfg_options: Optional[dict] = None) -> nn.Module:
    """A one-input model in eval mode on ``device``: ``config``'s model (its 'tensor'
    forward, or backbone + neck for two-stage detectors: :func:`.analysis.tensor_forward`),
    else the ImageNet classifier of ``arch``."""
    if not config:
        return ArchClassifier(arch).to(device).eval()
    model = build_from_config(config, cfg_options).to(device).eval()
    return tensor_forward(model, device)


def _autocast(device: str, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=amp_dtype(device))


def _loss(outputs) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs.float().mean()
    return sum(_loss(o) for o in outputs)


def forward_step(model: nn.Module, inputs: torch.Tensor, device: str, amp: bool = False,
                 train: bool = False) -> Callable[[], object]:
    """One call of the timed work: an inference forward (``torch.inference_mode``), or
    with ``train`` a training step (forward, mean of the outputs as the loss, backward,
    AdamW step; the model is put in train mode)."""
    if not train:
        def infer():
            with torch.inference_mode(), _autocast(device, amp):
                return model(inputs)
        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with _autocast(device, amp):
            loss = _loss(model(inputs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def scan_share(step: Callable[[], object], iters: int, device: str) -> Tuple[float, float]:
    """Fractions of ``step``'s time inside selective_scan and inside the fused CPU
    token-mixer op (``msvmamba_ops.cpu_fused.ms2d_branch``), over ``iters`` calls."""
    timers = {'scan': timing.CallTimer(msvmamba_module.selective_scan, device),
              'fused': timing.CallTimer(cpu_fused.ms2d_branch, device)}
    msvmamba_module.selective_scan, cpu_fused.ms2d_branch = timers['scan'], timers['fused']
    try:
        timing.time_calls(step, 1, warmup=0, device=device)  # warm the wrapped path
        for timer in timers.values():
            timer.reset()
        total = sum(timing.time_calls(step, iters, warmup=0, device=device))
        return timers['scan'].seconds() / total, timers['fused'].seconds() / total
    finally:
        msvmamba_module.selective_scan = timers['scan'].fn
        cpu_fused.ms2d_branch = timers['fused'].fn


def _tensors(outputs) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for o in outputs for t in _tensors(o)]


def amp_agreement(reference, outputs) -> Tuple[float, Optional[float]]:
    """How close reduced-precision ``outputs`` are to float32 ``reference`` (a tensor or
    nested tuples/lists of them, same structure): ``(rel_err, top5_overlap)``, rel_err =
    max |outputs - reference| / max |reference| (the largest over the tensors), and for
    (N, classes) logits the mean share of each row's 5 highest classes that both rank in
    their top 5 (None for other outputs)."""
    pairs = list(zip(_tensors(reference), _tensors(outputs)))
    rel_err = max(rel_error(o, r) for r, o in pairs)
    top5 = None
    if len(pairs) == 1 and pairs[0][0].dim() == 2 and pairs[0][0].shape[1] >= 5:
        r, o = (t.float().topk(5, dim=1).indices for t in pairs[0])
        top5 = (r[:, :, None] == o[:, None, :]).any(2).float().mean().item()
    return rel_err, top5


def amp_comparison(model: nn.Module, inputs: torch.Tensor, iters: int, warmup: int,
                   device: str = 'cpu') -> Dict:
    """Inference in float32 and under autocast (``amp_inference.amp_dtype``), alternating
    call by call: ``dict(fp32, amp`` (seconds, median)``, rel_err, top5)``
    (:func:`amp_agreement` of the two outputs on ``inputs``)."""
    fp32 = forward_step(model, inputs, device, amp=False)
    amp = forward_step(model, inputs, device, amp=True)
    result = dict(zip(('rel_err', 'top5'), amp_agreement(fp32(), amp())))
    times = timing.time_alternating({'fp32': fp32, 'amp': amp}, iters, warmup, device)
    result.update({k: timing.median(v) for k, v in times.items()})
    return result


def amp_report(result: Dict, batch: int, device: str) -> str:
    """The line of :func:`amp_comparison`'s result, e.g. ``bf16 vs fp32: 1.85x (30.2 vs 16.3
    img/s), logits rel err 6.1e-03, top-5 overlap 100%``."""
    name = 'fp16' if amp_dtype(device) == torch.float16 else 'bf16'
    line = (f'{name} vs fp32: {result["fp32"] / result["amp"]:.2f}x ({batch / result["amp"]:.2f} '
            f'vs {batch / result["fp32"]:.2f} img/s), logits rel err {result["rel_err"]:.1e}')
    if result['top5'] is not None:
        line += f', top-5 overlap {result["top5"] * 100:.0f}%'
    return line


def _switched(step: Callable[[], object], enabled: bool) -> Callable[[], object]:
    def run():
        with fused_ops(enabled):
            return step()
    return run


def benchmark_model(model: nn.Module, inputs: torch.Tensor, iters: int = 20, warmup: int = 2,
                    device: str = 'cpu', amp: bool = False, train: bool = False,
                    compare_unfused: bool = False, scan_timing: bool = True,
                    compare_amp: bool = False) -> Dict:
    """Throughput of ``model`` on ``inputs``: returns ``dict(times`` (seconds per call),
    ``peak_mib, page_faults`` (per call, CPU), ``gflops`` (the matmul yardstick before and
    after), ``scan_share, fused_share`` (``scan_timing``), ``fused, unfused`` (seconds,
    median; ``compare_unfused`` on the CPU: the two alternating call by call), ``amp``
    (``compare_amp``: :func:`amp_comparison`'s result)``)``."""
    step = forward_step(model, inputs, device, amp, train)
    result = dict(gflops=[timing.matmul_gflops(device)])
    timing.reset_peak_memory(device)
    faults = timing.page_faults()
    result['times'] = timing.time_calls(step, iters, warmup, device)
    result['page_faults'] = (timing.page_faults() - faults) / (warmup + iters)
    result['peak_mib'] = timing.peak_memory_mib(device)
    result['gflops'].append(timing.matmul_gflops(device))
    if scan_timing:
        result['scan_share'], result['fused_share'] = scan_share(step, max(1, iters // 2),
                                                                 device)
    if compare_unfused and device == 'cpu':
        both = timing.time_alternating({'fused': _switched(step, True),
                                        'unfused': _switched(step, False)}, iters, warmup)
        result.update({k: timing.median(v) for k, v in both.items()})
    if compare_amp:
        result['amp'] = amp_comparison(model.eval(), inputs, iters, warmup, device)
    return result


def report(result: Dict, batch: int, device: str) -> List[str]:
    """The lines ``tools/analysis_tools/benchmark.py`` prints for :func:`benchmark_model`'s
    result."""
    times = result['times']
    med = timing.median(times)
    lines = [f'{batch / med:.2f} img/s (median {med * 1000:.1f} ms per batch over '
             f'{len(times)} iterations, min {min(times) * 1000:.1f} ms)',
             f'peak memory: {result["peak_mib"]:.0f} MiB '
             f'({"torch max allocated" if device == "cuda" else "process peak RSS"})']
    if device == 'cpu':
        lines.append(f'page faults per forward: {result["page_faults"]:.0f}')
    lines.append(f'machine yardstick: 1024x1024 float32 matmul at {result["gflops"][0]:.0f} '
                 f'GFLOP/s before and {result["gflops"][1]:.0f} after the timed forwards')
    if result.get('fused_share', 0) > 0:
        lines.append('fused token-mixer op (depthwise convs, x/dt projections, selective scan, '
                     f'out_norm, merge, gate) share of forward time: '
                     f'{result["fused_share"] * 100:.1f}%')
    if 'scan_share' in result:
        lines.append('selective_scan share of forward time (calls outside the fused op): '
                     f'{result["scan_share"] * 100:.1f}%')
    if 'fused' in result:
        lines.append(f'fused vs unfused ops, alternating in this process: '
                     f'{result["unfused"] / result["fused"]:.2f}x ({batch / result["fused"]:.2f} '
                     f'vs {batch / result["unfused"]:.2f} img/s)')
    if 'amp' in result:
        lines.append(amp_report(result['amp'], batch, device))
    return lines


# ------------------------------------------------------------ PyTorch against ONNX runtimes

def pytorch_runner(model: nn.Module, fused: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model(x)`` in inference mode with the fused CPU ops on or off."""
    def run(x):
        with fused_ops(fused), torch.inference_mode():
            return model(x)
    return run


def compare_runtimes(runners: Dict[str, Callable[[torch.Tensor], object]], batch: int,
                     shape: Sequence[int], iters: int, warmup: int,
                     reference: str = 'pytorch fused') -> Dict:
    """Each runner's relative error against ``reference`` (max |diff| / max |reference|)
    and its seconds per call on a random batch, the runners alternating, each call timed
    settled (:func:`.timing.time_alternating` with ``settle=1``):
    ``dict(batch, errors={name: error}, times={name: [seconds]})``."""
    x = torch.randn(batch, 3, *shape)
    want = torch.as_tensor(runners[reference](x))
    errors = {name: rel_error(torch.as_tensor(fn(x)), want)
              for name, fn in runners.items() if name != reference}
    # settled: ONNX Runtime's spinning workers must not slow the PyTorch call after it
    times = timing.time_alternating({name: (lambda fn=fn: fn(x))
                                     for name, fn in runners.items()}, iters, warmup,
                                    settle=1)
    return dict(batch=batch, errors=errors, times=times)


def runtime_report(row: Dict, reference: str = 'pytorch fused',
                   plain: str = 'pytorch unfused') -> List[str]:
    """The lines ``benchmark_onnx.py`` prints for one row of :func:`compare_runtimes`."""
    batch = row['batch']
    med = {name: timing.median(t) for name, t in row['times'].items()}
    lines = [f'batch {batch} parity, max |diff| / max |{reference}|: '
             + ', '.join(f'{name} {err:.1e}' for name, err in row['errors'].items()),
             f'batch {batch}: ' + ', '.join(f'{name} {batch / t:.2f} img/s ({t * 1000:.0f} ms)'
                                            for name, t in med.items())]
    for name in med:
        if not name.startswith('pytorch'):
            lines.append(f'  {name}: {med[reference] / med[name]:.2f}x {reference} '
                         f'(goal >= 0.7x), {med[plain] / med[name]:.2f}x {plain} (goal >= 1x)')
    return lines
