#!/usr/bin/env python
"""One-command GPU check of the selective-scan backends (CUDA extension and Triton).

Needs only torch (and triton for the Triton backend); imports ``msvmamba_ops`` from this
checkout without installing it, and builds the CUDA extension into the cache
(``$MSVMAMBA_CACHE``, default ``~/.cache/msvmamba-mm``) when it is not built yet. It

1. checks every backend against the float64 reference (``msvmamba_ops.reference``), forward
   and backward, on fresh random inputs of several shapes, up to detection-scale L = 67,000:
   max |error| / max |reference| per tensor must be < 1e-5 for fp32 and < 1e-2 for fp16/bf16
   results (a NaN/Inf never passes);
2. times each backend's forward and backward with CUDA events (median after warm-up) at the
   MSVMamba-Tiny scan shapes for batch 128 at 224x224, and reports the achieved GB/s (bytes
   of the tensors read and written once) against a measured device-to-device copy;
3. times the whole MSVMamba-Tiny backbone per backend (inference and training img/s, fp32 and
   AMP (bf16 autocast), batch 128, 224x224, peak memory), if ``projects.msvmamba`` imports
   without the OpenMMLab packages;
4. writes a markdown report (``--out``, e.g. docs/benchmarks.md) with the GPU, driver, torch
   and CUDA versions.

Usage (repo root):  python tools/analysis_tools/gpu_check.py --out docs/benchmarks.md
``--dry-run`` runs on the CPU (CI): argument parsing, the reference path on tiny shapes (the
fp32 reference stands in for a backend) and the report writing.
"""
import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_NAMES = ('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class Case:
    """One correctness case: sizes, dtype and flags."""

    def __init__(self, name, batch, dim, groups, nstate, length, dtype='fp32', softplus=True,
                 out_float=False, dout_float=False, with_D=True, with_bias=True):
        self.name, self.batch, self.dim, self.groups = name, batch, dim, groups
        self.nstate, self.length, self.dtype = nstate, length, dtype
        self.softplus, self.out_float, self.dout_float = softplus, out_float, dout_float
        self.with_D, self.with_bias = with_D, with_bias

    @property
    def shape(self) -> str:
        return f'{self.batch},{self.dim},{self.groups},{self.nstate},{self.length}'

    def flags(self) -> str:
        names = [('softplus', self.softplus), ('out_float', self.out_float),
                 ('dout_fp32', self.dout_float), ('no D', not self.with_D),
                 ('no bias', not self.with_bias)]
        return ', '.join(n for n, on in names if on)


def _cases(specs) -> List[Case]:
    """One case per dtype of each spec; flag ``oflex``: fp32 output and dout for fp16/bf16."""
    out = []
    for name, sizes, dtypes, kw in specs:
        for dt in dtypes:
            extra = dict(kw)
            oflex = extra.pop('oflex', False) and dt != 'fp32'
            out.append(Case(name, *sizes, dtype=dt, out_float=oflex, dout_float=oflex, **extra))
    return out


# (name, (batch, dim, groups, nstate, length), dtypes, flags). Sizes exercise: several rows
# per warp (short L), multi-chunk rows, multi-warp teams (few rows, long L), general N with
# groups, odd channels per group, L not a multiple of 8. The long-L references take seconds
# each (a Python loop over L), hence fewer dtypes there.
ALL = ('fp32', 'bf16', 'fp16')
GPU_CASES = _cases([
    ('n1 stage-3 L', (4, 96, 1, 1, 49), ALL, {}),
    ('n1 stage-0 L', (2, 64, 1, 1, 3136), ALL, dict(oflex=True)),
    ('n1 odd channels/group', (3, 5, 1, 1, 147), ALL, dict(with_bias=False)),
    ('n16 groups', (2, 32, 4, 16, 777), ALL, dict(oflex=True)),
    ('n4 long, no softplus', (1, 4, 2, 4, 20000), ('fp32', 'bf16'),
     dict(softplus=False, with_D=False)),
    ('n1 detection L', (1, 8, 1, 1, 67000), ('fp32', 'bf16'), {}),
])
DRY_CASES = _cases([
    ('n1 tiny', (2, 4, 1, 1, 19), ('fp32', 'bf16'), {}),
    ('n2 groups tiny', (1, 4, 2, 2, 9), ('fp32', 'bf16'), dict(oflex=True)),
])

# MSVMamba-Tiny (master) at 224x224: per stage E and the full-res / low-res scan lengths.
TINY_STAGES = [(0, 192, 3136, 2352), (1, 384, 784, 588), (2, 768, 196, 147), (3, 1536, 49, 48)]


# ----------------------------------------------------------------------------- inputs/oracle
def make_inputs(case: Case, device='cpu', seed=0) -> dict:
    """Random inputs like the model's, generated on ``device``: dt = softplus(delta + bias)
    (or delta + bias) mostly in 0.001..0.1, A = -exp(A_log) with A_log = log(1..N) (+ noise),
    u, B, C, D ~ N(0, 1). Also ``dout`` for the backward."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]
    bt, dim, g, n, length = case.batch, case.dim, case.groups, case.nstate, case.length

    def rnd(*shape, scale=1.0, uniform=False):
        fn = torch.rand if uniform else torch.randn
        return fn(*shape, generator=gen, device=device) * scale

    dt0 = torch.exp(rnd(dim, uniform=True) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    if case.softplus:  # delta_bias = softplus^-1(dt0)
        delta, bias = rnd(bt, dim, length, scale=0.5), dt0 + torch.log(-torch.expm1(-dt0))
    else:  # dt = delta + bias itself: keep it positive
        delta, bias = rnd(bt, dim, length, scale=0.1, uniform=True), dt0
    A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32, device=device)).repeat(dim, 1)
    out_dtype = torch.float32 if case.out_float else dtype
    return dict(
        u=rnd(bt, dim, length).to(dtype),
        delta=delta.to(dtype),
        A=-torch.exp(A_log + rnd(dim, n, scale=0.1)),
        B=rnd(bt, g, n, length).to(dtype),
        C=rnd(bt, g, n, length).to(dtype),
        D=rnd(dim) if case.with_D else None,
        delta_bias=bias if case.with_bias else None,
        dout=rnd(bt, dim, length).to(torch.float32 if case.dout_float else out_dtype),
    )


def reference(case: Case, data: dict) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
    """float64 output and autograd gradients of selective_scan_ref (on the inputs' device,
    results on the CPU), from the (already rounded) inputs upcast to float64."""
    from msvmamba_ops.reference import selective_scan_ref
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
    xs = [None if data[k] is None else data[k].detach().double().requires_grad_()
          for k in names]
    y = selective_scan_ref(*xs, delta_softplus=case.softplus)
    y.backward(data['dout'].double())
    return y.detach().cpu(), [None if x is None else x.grad.cpu() for x in xs]


def rel_error(got: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> float:
    """max |got - ref| / max |ref|; inf for a missing/extra/misshaped or non-finite result."""
    if got is None or ref is None:
        return 0.0 if got is None and ref is None else math.inf
    if tuple(got.shape) != tuple(ref.shape):
        return math.inf
    if got.numel() == 0:
        return 0.0
    got = got.detach().cpu().double()
    if not torch.isfinite(got).all():
        return math.inf
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    return err / scale if scale > 0 else err


def check_backend(backend, case: Case, data: dict, ref) -> Dict[str, float]:
    """Relative errors of the backend's fwd/bwd (and dtype mismatches as inf) per tensor."""
    dtype = DTYPES[case.dtype]
    args = [data[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')]
    out = backend.fwd(*args, case.softplus, case.out_float)
    grads = backend.bwd(*args, data['dout'], case.softplus)
    y_ref, g_ref = ref
    want = [dtype, dtype, torch.float32, dtype, dtype, torch.float32, torch.float32]
    errs = {'out': rel_error(out, y_ref)}
    if out.dtype != (torch.float32 if case.out_float else dtype):
        errs['out'] = math.inf
    for name, g, r, w in zip(GRAD_NAMES, grads, g_ref, want):
        errs[name] = rel_error(g, r) if g is None or g.dtype == w else math.inf
    return errs


def passes(case: Case, errs: Dict[str, float]) -> bool:
    dtype = DTYPES[case.dtype]
    for name, err in errs.items():
        res_dtype = torch.float32 if name in ('dA', 'dD', 'ddelta_bias') or (
            name == 'out' and case.out_float) else dtype
        if not err < TOL[res_dtype]:  # NaN/inf never pass
            return False
    return True


class ReferenceBackend:
    """The fp32 reference behind the backend interface (dry run; CPU)."""

    @staticmethod
    def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
        from msvmamba_ops.reference import selective_scan_ref
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)

    @staticmethod
    def bwd(u, delta, A, B, C, D, delta_bias, dout, delta_softplus):
        from msvmamba_ops.reference import selective_scan_ref
        xs = [None if x is None else x.detach().float().requires_grad_()
              for x in (u, delta, A, B, C, D, delta_bias)]
        selective_scan_ref(*xs, delta_softplus=delta_softplus, out_float=True).backward(
            dout.float())
        dtypes = [u.dtype, u.dtype, torch.float32, u.dtype, u.dtype, torch.float32,
                  torch.float32]
        return tuple(None if x is None else x.grad.to(d) for x, d in zip(xs, dtypes))


# ----------------------------------------------------------------------------- timing
def timer(device: str, fn: Callable[[], object], warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds of fn() (CUDA events on a GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device == 'cuda':
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of a device-to-device copy (bytes read + written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timer(device, lambda: dst.copy_(src), warmup=3, iters=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def scan_bytes(batch, dim, length, dtype, backward: bool) -> int:
    """Bytes of the scan's tensors, each read or written once (N = 1, G = 1)."""
    e = torch.tensor([], dtype=dtype).element_size()
    big, bc, params = batch * dim * length * e, batch * length * e, 3 * dim * 4
    if not backward:  # u, delta, B, C in; out
        return 3 * big + 2 * bc + params
    return 5 * big + 4 * bc + 2 * params  # u, delta, dout, B, C in; du, ddelta, dB, dC out


def bench_kernels(backends: Dict[str, object], device: str, batch: int, stages, dtypes,
                  iters: int, deadline: float) -> List[dict]:
    rows = []
    for dname in dtypes:
        for stage, dim, l_full, l_low in stages:
            for branch, length in (('full-res', l_full), ('low-res', l_low)):
                case = Case('', batch, dim, 1, 1, length, dtype=dname)
                data = make_inputs(case, device=device)
                args = [data[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')]
                for bname, backend in backends.items():
                    row = dict(stage=stage, branch=branch, dim=dim, length=length, dtype=dname,
                               backend=bname)
                    if time.time() > deadline:
                        row['note'] = 'skipped: time budget'
                        rows.append(row)
                        continue
                    try:
                        row['fwd_ms'] = timer(device, lambda: backend.fwd(*args, True, False),
                                              iters=iters)
                        row['bwd_ms'] = timer(
                            device, lambda: backend.bwd(*args, data['dout'], True), iters=iters)
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        row['note'] = f'error: {type(exc).__name__}: {exc}'[:200]
                    for kind in ('fwd', 'bwd'):
                        if f'{kind}_ms' in row:
                            nbytes = scan_bytes(batch, dim, length, DTYPES[dname], kind == 'bwd')
                            row[f'{kind}_gbs'] = nbytes / (row[f'{kind}_ms'] * 1e-3) / 1e9
                    rows.append(row)
                del data, args
    return rows


# ----------------------------------------------------------------------------- backbone
@contextlib.contextmanager
def scan_backend(name: str):
    """Route msvmamba_ops.selective_scan to one backend (its MSVMAMBA_SCAN_BACKEND variable)."""
    from msvmamba_ops import ENV_BACKEND
    old = os.environ.get(ENV_BACKEND)
    os.environ[ENV_BACKEND] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_BACKEND)
        else:
            os.environ[ENV_BACKEND] = old


def bench_backbone(backends: Sequence[str], device: str, batch: int, size: int, iters: int,
                   deadline: float):
    """Rows of img/s and peak memory, or a 'skipped: reason' string."""
    try:
        from projects.msvmamba import MSVMamba
    except Exception as exc:  # noqa: BLE001 - any import problem is reported, not raised
        return f'skipped: projects.msvmamba does not import here ({type(exc).__name__}: {exc})'
    rows = []
    for bname in backends:
        for mode in ('inference', 'training'):
            for prec in ('fp32', 'amp'):
                row = dict(backend=bname, mode=mode, precision=prec)
                rows.append(row)
                if time.time() > deadline:
                    row['note'] = 'skipped: time budget'
                    continue
                try:
                    row.update(_time_backbone(MSVMamba, bname, device, batch, size, mode, prec,
                                              iters))
                except torch.cuda.OutOfMemoryError:
                    row['note'] = 'out of memory'
                except Exception as exc:  # noqa: BLE001
                    row['note'] = f'error: {type(exc).__name__}: {exc}'[:200]
                if device == 'cuda':
                    torch.cuda.empty_cache()
    return rows


def _time_backbone(cls, bname, device, batch, size, mode, prec, iters) -> dict:
    model = cls(arch='tiny').to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=prec == 'amp')
    if mode == 'training':
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with amp:
                loss = sum(o.float().mean() for o in model(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), amp:
                model(x)
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with scan_backend(bname):
        ms = timer(device, step, warmup=2, iters=iters)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else float('nan')
    return dict(img_s=batch / (ms * 1e-3), peak_gib=peak)


# ----------------------------------------------------------------------------- environment
def environment(device: str) -> Dict[str, str]:
    env = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
           'python': platform.python_version(),
           'torch': f'{torch.__version__} (CUDA {torch.version.cuda})'}
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = 'not installed'
    if device == 'cuda':
        prop = torch.cuda.get_device_properties(0)
        env['GPU'] = (f'{prop.name} (sm_{prop.major}{prop.minor}, {prop.multi_processor_count} '
                      f'SMs, {prop.total_memory / 2**30:.0f} GiB)')
        try:
            env['driver'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env['driver'] = 'unknown (nvidia-smi not available)'
    else:
        env['GPU'] = f'none (dry run on CPU: {platform.processor() or platform.machine()})'
        env['driver'] = 'n/a'
    return env


def load_backends(device: str, dry_run: bool, names: Sequence[str], notes: Dict[str, str]):
    """The backend modules to check; the reasons for missing ones go to ``notes``."""
    if dry_run:
        return {'reference-fp32': ReferenceBackend()}
    backends = {}
    if 'cuda' in names:
        from msvmamba_ops import build, cuda_scan
        reason = build.buildable('cuda')
        if reason is not None:
            notes['cuda'] = f'skipped: {reason}'
        else:
            cached = build.is_built('cuda')
            t0 = time.time()
            print(f'[gpu_check] CUDA extension: {"cached" if cached else "building"} '
                  f'(arch list {build.cuda_arch_list()}) in {build.build_dir("cuda")}', flush=True)
            try:
                build.load_extension('cuda')
                took = time.time() - t0
                notes['cuda'] = 'cached build' if cached else f'built in {took:.0f} s'
                print(f'[gpu_check] CUDA extension ready ({notes["cuda"]})', flush=True)
                backends['cuda'] = cuda_scan
            except build.ExtensionError as exc:
                notes['cuda'] = f'build failed: {exc}'[:300]
                print(f'[gpu_check] {exc}', flush=True)
    if 'triton' in names:
        from msvmamba_ops import triton_scan
        if triton_scan.is_available():
            backends['triton'] = triton_scan
        else:
            notes['triton'] = 'skipped: triton not available'
    return backends


# ----------------------------------------------------------------------------- report
def _fmt(x, spec='.3g') -> str:
    if x is None:
        return '-'
    if isinstance(x, float):
        return 'nan' if math.isnan(x) else ('inf' if math.isinf(x) else format(x, spec))
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(_fmt(c) for c in r) + ' |' for r in rows]
    return lines


def write_report(path: Optional[str], env, notes, checks, kernel_rows, copy_gbs, backbone,
                 command: str) -> str:
    lines = ['# Selective-scan GPU check', '',
             f'Generated by `{command}`.', '']
    lines += _table(['item', 'value'], [[k, v] for k, v in env.items()]
                    + [[f'backend {k}', v] for k, v in notes.items()]
                    + [['device-to-device copy', f'{copy_gbs:.0f} GB/s' if copy_gbs else '-']])
    lines += ['', '## Correctness against the float64 reference', '',
              'max |error| / max |reference| per tensor; pass: < 1e-5 for fp32 results, '
              '< 1e-2 for fp16/bf16 results (dA, dD, ddelta_bias are fp32); NaN/Inf never '
              'pass. Shape = (batch, D, G, N, L).', '']
    crows = []
    for c, b, e, ok in checks:  # e: errors per tensor, or the exception's text
        errs = [e.get(k) for k in ('out', *GRAD_NAMES)] if isinstance(e, dict) else \
            [e] + [None] * len(GRAD_NAMES)
        crows.append([c.name, c.shape, c.dtype, c.flags(), b, *errs, 'yes' if ok else '**NO**'])
    lines += _table(['case', 'shape', 'dtype', 'flags', 'backend', 'out', *GRAD_NAMES, 'pass'],
                    crows)
    lines += ['', '## Scan kernels at MSVMamba-Tiny shapes', '',
              'N = 1, G = 1, softplus, fp32 A/D/bias; median time; GB/s = bytes of the inputs '
              'and outputs each moved once / time (forward: u, delta, B, C, out; backward: '
              'u, delta, dout, B, C, du, ddelta, dB, dC), % = of the copy bandwidth.', '']
    krows = []
    for r in kernel_rows:
        pct = {k: (100 * r[f'{k}_gbs'] / copy_gbs if copy_gbs and f'{k}_gbs' in r else None)
               for k in ('fwd', 'bwd')}
        krows.append([r['stage'], r['branch'], r['dim'], r['length'], r['dtype'], r['backend'],
                      r.get('fwd_ms'), r.get('fwd_gbs'), pct['fwd'], r.get('bwd_ms'),
                      r.get('bwd_gbs'), pct['bwd'], r.get('note', '')])
    lines += _table(['stage', 'branch', 'E', 'L', 'dtype', 'backend', 'fwd ms', 'fwd GB/s',
                     'fwd %', 'bwd ms', 'bwd GB/s', 'bwd %', 'note'], krows)
    lines += ['', '## MSVMamba-Tiny backbone', '']
    if isinstance(backbone, str):
        lines.append(backbone)
    else:
        lines += ['Training = forward + backward + AdamW step; AMP = bf16 autocast.', '']
        lines += _table(['backend', 'mode', 'precision', 'img/s', 'peak memory GiB', 'note'],
                        [[r['backend'], r['mode'], r['precision'], r.get('img_s'),
                          r.get('peak_gib'), r.get('note', '')] for r in backbone])
    text = '\n'.join(lines) + '\n'
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='markdown report to write (e.g. docs/benchmarks.md)')
    p.add_argument('--dry-run', action='store_true',
                   help='CPU only: reference on tiny shapes, report writing (CI)')
    p.add_argument('--backends', default='cuda,triton', help='comma-separated (cuda,triton)')
    p.add_argument('--batch', type=int, default=128, help='batch of the timings')
    p.add_argument('--dtypes', default='fp32,bf16', help='dtypes of the kernel timings')
    p.add_argument('--iters', type=int, default=30, help='timed runs per kernel measurement')
    p.add_argument('--skip-backbone', action='store_true')
    p.add_argument('--time-budget', type=float, default=420.0,
                   help='seconds after which remaining timings are skipped')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    deadline = t_start + args.time_budget
    device = 'cpu' if args.dry_run else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        print('[gpu_check] no CUDA device visible; use --dry-run on a CPU machine',
              file=sys.stderr)
        return 2
    command = 'python tools/analysis_tools/gpu_check.py ' + ' '.join(sys.argv[1:] if argv is None
                                                                      else argv)
    env = environment(device)
    notes: Dict[str, str] = {}
    backends = load_backends(device, args.dry_run, args.backends.split(','), notes)

    checks = []
    for case in (DRY_CASES if args.dry_run else GPU_CASES):
        data = make_inputs(case, device=device, seed=len(checks) + int(time.time()))
        ref = reference(case, data)
        for bname, backend in backends.items():
            try:
                errs = check_backend(backend, case, data, ref)
                ok = passes(case, errs)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                errs, ok = f'error: {type(exc).__name__}: {exc}'[:200], False
            checks.append((case, bname, errs, ok))
            print(f'[gpu_check] {case.name} {case.shape} {case.dtype} {bname}: '
                  f'{"ok" if ok else "FAILED"} {errs if not ok else ""}', flush=True)
        del data
    if args.dry_run:
        batch, stages, iters = 2, [(0, 8, 16, 12)], 2
    else:
        batch, stages, iters = args.batch, TINY_STAGES, args.iters
    copy_gbs = copy_bandwidth(device, 1 << 30 if device == 'cuda' else 1 << 22)
    kernel_rows = bench_kernels(backends, device, batch, stages, args.dtypes.split(','), iters,
                                deadline)
    if args.skip_backbone:
        backbone = 'skipped: --skip-backbone'
    elif args.dry_run:
        backbone = 'skipped: dry run'
    else:
        backbone = bench_backbone(list(backends), device, batch, 224, 10, deadline)
    text = write_report(args.out, env, notes, checks, kernel_rows, copy_gbs, backbone, command)
    print(text)
    failed = sum(not ok for _, _, _, ok in checks)
    print(f'[gpu_check] {len(checks) - failed}/{len(checks)} checks passed, '
          f'{time.time() - t_start:.0f} s' + (f'; report in {args.out}' if args.out else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
