#!/usr/bin/env python
"""One-command GPU check of the selective-scan backends (CUDA extension and Triton).

Needs only torch (and triton for the Triton backend); imports ``msvmamba_ops`` from this
checkout without installing it, and builds the CUDA extension into the cache
(``$MSVMAMBA_CACHE``, default ``~/.cache/msvmamba-mm``) when it is not built yet. It

1. checks every backend against the float64 reference (``msvmamba_ops.reference``), forward
   and backward, on fresh random inputs of several shapes, up to detection-scale L = 67,000:
   max |error| / max |reference| per tensor must be within the per-backend, per-dtype bound
   of ``msvmamba_ops.testing.TOLERANCES`` (a NaN/Inf never passes);
2. times each backend's forward and backward with CUDA events (median after warm-up) at the
   MSVMamba-Tiny scan shapes for batch 128 at 224x224, and reports the achieved GB/s (bytes
   of the tensors read and written once) against a measured device-to-device copy;
3. times the whole MSVMamba-Tiny backbone per backend (inference and training img/s, fp32 and
   AMP (bf16 autocast), batch 128, 224x224, peak memory), if ``projects.msvmamba`` imports
   without the OpenMMLab packages;
4. writes a markdown report (``--out``, e.g. docs/gpu_check.md; it replaces that file, so not docs/benchmarks.md) with the GPU, driver, torch
   and CUDA versions;
5. trains through this checkout's tools when the OpenMMLab stack is installed (on a GPU: mmcv
   with CUDA ops, ``FORCE_CUDA=1 bash tools/setup.sh``), each step a subprocess with a time
   limit (a failure is reported, the other steps still run): ``tools/train.py`` on the
   quick-start config for 20 iterations with AMP, ``tools/test.py`` on its checkpoint,
   ``tools/dist_train.sh`` with one process (NCCL), and the training img/s and peak memory of
   Mask R-CNN-T at 1333x800 and UperNet-T at 512x512 (fp32 and AMP; ``--bench-train``).

Usage (repo root):  python tools/analysis_tools/gpu_check.py --out docs/gpu_check.md
``--dry-run`` runs on the CPU (CI): argument parsing, the reference path on tiny shapes (the
fp32 reference stands in for a backend) and the report writing; the training steps on the
CPU (2 iterations without AMP, gloo, the two models at a small input, fp32).
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
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from msvmamba_ops.testing import (DTYPES, GPU_CASES, GRAD_NAMES, TINY_STAGES,  # noqa: E402
                                  TOLERANCES, ScanCase, cases, check_backend, oracle, passes)

DRY_CASES = cases([
    ('n1 tiny', (2, 4, 1, 1, 19), ('fp32', 'bf16'), {}),
    ('n2 groups tiny', (1, 4, 2, 2, 9), ('fp32', 'bf16'), dict(oflex=True)),
])


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
                case = ScanCase('', batch, dim, 1, 1, length, dtype=dname)
                data, dout = case.inputs(device=device)
                args = list(data.values())
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
                            device, lambda: backend.bwd(*args, dout, True), iters=iters)
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
        from msvmamba_ops import reference
        return {'reference': reference}
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
              'max |error| / max |reference| per tensor; pass: within the bound of '
              'msvmamba_ops.testing.TOLERANCES for the backend and the result dtype ('
              + '; '.join(f'{b}: ' + ', '.join(f'{str(d)[6:]} {t:g}'
                                                for d, t in TOLERANCES[b].items())
                          for b in sorted({b for _, b, _, _ in checks}))
              + '; dA, dD, ddelta_bias are fp32); NaN/Inf never pass. '
              'Shape = (batch, D, G, N, L).', '']
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


# ----------------------------------------------------------------------------- training
# Training through this checkout's tools, as a user runs them (needs what tools/setup.sh
# installs; on a GPU, mmcv with CUDA ops: FORCE_CUDA=1). Every step is a subprocess with its
# own time limit, so this process never imports an OpenMMLab package and a failed or hung
# step is reported while the others still run.
QUICK_START = REPO / 'configs' / 'quick_start' / 'mask_rcnn_msvmamba_n_tiny_coco.py'
# (name, config, input (height, width) of the benchmark, dry-run input)
TRAIN_BENCH = [('Mask R-CNN-T', 'configs/mask_rcnn_msvmamba_t_1x.py', (800, 1333), (128, 128)),
               ('UperNet-T', 'configs/upernet_msvmamba_t_160k_ade20k.py', (512, 512), (64, 64))]
# seconds per step, each also bounded by what is left of --training-budget
STEP_TIMEOUT = {'data': 120, 'train': 240, 'test': 150, 'dist': 180, 'bench': 150}
_training_deadline = [float('inf')]


def run_step(name: str, cmd: Sequence[str], cwd: Path, timeout: float, env=None) -> dict:
    """Run one step; {'step', 'command', 'status' ('ok', 'FAILED (exit N)', 'TIMED OUT',
    'skipped: time budget'), 'seconds', 'output' (its last 4000 characters)}."""
    shown = ' '.join(str(c) for c in cmd).replace(str(REPO) + '/', '')
    timeout = min(timeout, _training_deadline[0] - time.time())
    if timeout < 10:
        return dict(step=name, command=shown, status='skipped: time budget', seconds=0.0,
                    output='')
    print(f'[gpu_check] {name}: {shown}', flush=True)
    t0 = time.time()
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=full_env,
                              timeout=timeout, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        out, status = proc.stdout, 'ok' if proc.returncode == 0 else \
            f'FAILED (exit {proc.returncode})'
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b'').decode()
        status = f'TIMED OUT after {timeout:.0f} s'
    row = dict(step=name, command=shown, status=status, seconds=time.time() - t0,
               output=out[-4000:])
    if status != 'ok':
        print(f'[gpu_check] {name}: {status}\n{row["output"][-2000:]}', flush=True)
    return row


def stack_problem(device: str) -> Optional[str]:
    """None if the OpenMMLab stack imports (on a GPU: mmcv with CUDA ops), else why not."""
    code = ('import mmdet, mmseg, mmcv.ops\n'
            'print(mmcv.ops.get_compiling_cuda_version())')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['?'])[-1]
        return f'the OpenMMLab stack does not import ({last}): run `bash tools/setup.sh`'
    if device == 'cuda' and 'not available' in proc.stdout:
        return ('mmcv is built without CUDA ops (RoIAlign/NMS cannot run on the GPU): run '
                '`FORCE_CUDA=1 bash tools/setup.sh`')
    return None


def _quick_start_options(iters: int) -> List[str]:
    warmup = min(10, iters // 2)  # the config's 10 warm-up iterations, fewer for short runs
    return ['--cfg-options', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={iters}', f'default_hooks.checkpoint.interval={iters}']


def train_test_steps(device: str, iters: int, work: Path) -> List[dict]:
    """tools/train.py on the quick-start config (AMP on a GPU), tools/test.py on its
    checkpoint, then tools/dist_train.sh with one process (NCCL on a GPU, gloo on a CPU)."""
    tools = REPO / 'tools'
    steps = [run_step('tiny COCO data', [sys.executable, tools / 'dataset_converters' /
                                         'make_tiny_datasets.py', 'coco', '--out-dir',
                                         'data/quick_start', '--num-train', 8, '--num-val', 4,
                                         '--class-colors'], work, STEP_TIMEOUT['data'])]
    amp = ['--amp'] if device == 'cuda' else []
    steps.append(run_step(f'train {iters} iterations' + (' (AMP)' if amp else ''),
                          [sys.executable, tools / 'train.py', QUICK_START, '--work-dir',
                           'train', *amp, *_quick_start_options(iters)],
                          work, STEP_TIMEOUT['train']))
    checkpoint = work / 'train' / f'iter_{iters}.pth'
    if checkpoint.is_file():
        steps.append(run_step('test the trained checkpoint',
                              [sys.executable, tools / 'test.py', QUICK_START, checkpoint,
                               '--work-dir', 'test'], work, STEP_TIMEOUT['test']))
    else:
        steps.append(dict(step='test the trained checkpoint', command='-', seconds=0.0,
                          status=f'FAILED (training saved no {checkpoint.name})', output=''))
    backend = 'nccl' if device == 'cuda' else 'gloo'
    dist = run_step(f'dist_train.sh, 1 process ({backend})',
                    ['bash', tools / 'dist_train.sh', QUICK_START, 1, '--work-dir', 'dist',
                     *_quick_start_options(max(2, iters // 2))],
                    work, STEP_TIMEOUT['dist'], env={'PORT': str(29500 + os.getpid() % 1000)})
    if dist['status'] == 'ok' and device == 'cuda' and 'nccl' not in dist['output'].lower():
        dist['status'] = 'FAILED (no NCCL process group in the log)'
    steps.append(dist)
    for row in steps:
        row['summary'] = summarize_log(row['output'])
    return steps


def summarize_log(text: str) -> str:
    """The last logged training iteration and loss, and any COCO mAP, of a tool's output."""
    import re
    parts = []
    iters = re.findall(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?\bloss: ([0-9.]+)', text)
    if iters:
        parts.append(f'iteration {iters[-1][0]}/{iters[-1][1]}, loss {iters[-1][2]}')
    parts += [f'{k} {v}' for k, v in re.findall(r'coco/(bbox_mAP|segm_mAP): (-?[0-9.]+)', text)]
    return ', '.join(parts)


def bench_training(device: str, iters: int, sizes: Dict[str, tuple]) -> List[dict]:
    """Training img/s and peak memory of Mask R-CNN-T and UperNet-T (random init, synthetic
    batches at ``sizes``), fp32 and AMP on a GPU, in a subprocess (``--bench-train``)."""
    precisions = ['fp32', 'amp'] if device == 'cuda' else ['fp32']
    rows = []
    for name, config, _, _ in TRAIN_BENCH:
        height, width = sizes[name]
        for prec in precisions:
            step = run_step(f'{name} {height}x{width} {prec}',
                            [sys.executable, Path(__file__).resolve(), '--bench-train', config,
                             '--bench-size', height, width, '--bench-precision', prec,
                             '--iters', iters, *(['--dry-run'] if device == 'cpu' else [])],
                            REPO, STEP_TIMEOUT['bench'])
            row = dict(model=name, size=f'{height}x{width}', precision=prec,
                       status=step['status'], seconds=step['seconds'])
            for line in step['output'].splitlines():
                if line.startswith('BENCH '):
                    import json
                    row.update(json.loads(line[6:]))
            if step['status'] == 'ok' and 'img_s' not in row:
                row['status'] = 'FAILED (no BENCH line in the output)'
            rows.append(row)
    return rows


def _synthetic_batch(scope: str, batch: int, height: int, width: int, num_classes: int):
    """A training batch as the data pipeline would deliver it: uint8 images and, for mmdet,
    8 boxes with their rectangle masks per image; for mmseg, a random label map."""
    import numpy as np
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0))
    samples = []
    for _ in range(batch):
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            xy = torch.rand(8, 2, generator=gen) * torch.tensor([width, height]) * 0.6
            wh = (0.1 + 0.3 * torch.rand(8, 2, generator=gen)) * torch.tensor([width, height])
            boxes = torch.cat([xy, xy + wh], 1).floor()
            masks = np.zeros((8, height, width), np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=boxes, labels=torch.randint(0, num_classes, (8, ), generator=gen),
                masks=BitmapMasks(masks, height, width))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, num_classes, (1, height, width), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def bench_train_main(args) -> int:
    """``--bench-train CONFIG``: time ``model.train_step`` of CONFIG's model (random init)
    on synthetic batches; prints one ``BENCH {json}`` line (runs in its own process)."""
    import copy
    import json
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    from projects.msvmamba_mm.scopes import scope_of

    device = 'cpu' if args.dry_run else 'cuda'
    cfg = Config.fromfile(str(REPO / args.bench_train))
    scope = scope_of(cfg, args.bench_train)
    scope.register_modules()
    init_default_scope(scope.name)
    cfg.model.backbone.init_cfg = None  # random weights: no ImageNet checkpoint needed
    height, width = args.bench_size
    if cfg.model.data_preprocessor.get('size'):  # mmseg pads every image to this size
        cfg.model.data_preprocessor.size = (height, width)
    model = MODELS.build(cfg.model)
    if device == 'cpu':  # SyncBN (UperNet) needs a GPU
        model = revert_sync_batchnorm(model)
    model = model.to(device).train()
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    if args.bench_precision == 'amp':
        optim_cfg.type = 'AmpOptimWrapper'
    else:
        optim_cfg.type = 'OptimWrapper'
        optim_cfg.pop('loss_scale', None)
    optim = build_optim_wrapper(model, optim_cfg)
    batch = 2 if args.dry_run else cfg.train_dataloader.batch_size  # BN needs 2 in the PPM
    num_classes = (cfg.model.roi_head.bbox_head.num_classes if scope.name == 'mmdet'
                   else cfg.model.decode_head.num_classes)
    data = _synthetic_batch(scope.name, batch, height, width, num_classes)
    warmup, iters = (0, 1) if args.dry_run else (2, args.iters)

    def sync():
        if device == 'cuda':
            torch.cuda.synchronize()

    for _ in range(warmup):
        model.train_step(copy.deepcopy(data), optim)
    sync()
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        losses = model.train_step(copy.deepcopy(data), optim)
    sync()
    seconds = time.perf_counter() - t0
    result = dict(batch=batch, iters=iters, img_s=batch * iters / seconds,
                  loss=float(torch.as_tensor(losses['loss']).detach()))
    if device == 'cuda':
        result['peak_gib'] = torch.cuda.max_memory_allocated() / 2**30
    print('BENCH ' + json.dumps(result), flush=True)
    return 0


def training_sections(args, device: str) -> dict:
    """Sections 5-7 of the report: end-to-end train/test, dist_train.sh, training speed."""
    import tempfile
    if args.skip_training:
        return dict(skipped='skipped: --skip-training')
    problem = stack_problem(device)
    if problem is not None:
        print(f'[gpu_check] training sections skipped: {problem}', flush=True)
        return dict(skipped=f'skipped: {problem}')
    iters = 2 if args.dry_run else args.train_iters
    # a dry run (CI, a shared CPU) is bounded by the per-step limits only
    _training_deadline[0] = time.time() + (math.inf if args.dry_run else args.training_budget)
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        steps = train_test_steps(device, iters, Path(tmp))
    sizes = {name: (dry if args.dry_run else real) for name, _, real, dry in TRAIN_BENCH}
    return dict(steps=steps, bench=bench_training(device, args.bench_iters, sizes))


def training_report(sections: dict) -> List[str]:
    lines = ['', '## Training through the tools', '']
    if 'skipped' in sections:
        return lines + [sections['skipped']]
    lines += ['`tools/train.py` on the quick-start config (Mask R-CNN + MSVMamba-Nano, tiny '
              'COCO-format shapes; AMP on a GPU), `tools/test.py` on its checkpoint, '
              '`tools/dist_train.sh` with one process.', '']
    lines += _table(['step', 'status', 'seconds', 'result', 'command'],
                    [[s['step'], s['status'], s['seconds'], s.get('summary', ''),
                      f"`{s['command']}`"] for s in sections['steps']])
    lines += ['', '## Mask R-CNN-T and UperNet-T training speed', '',
              'model.train_step (forward, backward, optimizer step) on synthetic batches of the '
              "config's batch size per GPU, random init; AMP = AmpOptimWrapper (fp16, dynamic "
              'loss scale); mean over the timed iterations after 2 warm-up ones.', '']
    lines += _table(['model', 'input', 'precision', 'batch', 'img/s', 'peak memory GiB',
                     'status'],
                    [[r['model'], r['size'], r['precision'], r.get('batch'), r.get('img_s'),
                      r.get('peak_gib'), r['status']] for r in sections['bench']])
    return lines


def training_failures(sections: dict) -> int:
    """Training steps that failed or timed out (skipped ones are reported, not counted)."""
    return sum(row['status'] != 'ok' and not row['status'].startswith('skipped')
               for row in sections.get('steps', []) + sections.get('bench', []))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='markdown report to write, replacing the file (e.g. docs/gpu_check.md)')
    p.add_argument('--dry-run', action='store_true',
                   help='CPU only: reference on tiny shapes, report writing (CI)')
    p.add_argument('--backends', default='cuda,triton', help='comma-separated (cuda,triton)')
    p.add_argument('--batch', type=int, default=128, help='batch of the timings')
    p.add_argument('--dtypes', default='fp32,bf16', help='dtypes of the kernel timings')
    p.add_argument('--iters', type=int, default=30, help='timed runs per kernel measurement')
    p.add_argument('--skip-backbone', action='store_true')
    p.add_argument('--skip-training', action='store_true',
                   help='skip the training steps through the tools (sections 5-7)')
    p.add_argument('--train-iters', type=int, default=20,
                   help='iterations of the quick-start training run')
    p.add_argument('--bench-iters', type=int, default=5,
                   help='timed iterations of each Mask R-CNN-T / UperNet-T measurement')
    p.add_argument('--training-budget', type=float, default=300.0,
                   help='seconds for all training steps together (GPU runs)')
    # one training-speed measurement, run by the training step in its own process
    p.add_argument('--bench-train', metavar='CONFIG', help=argparse.SUPPRESS)
    p.add_argument('--bench-size', type=int, nargs=2, default=(512, 512), help=argparse.SUPPRESS)
    p.add_argument('--bench-precision', choices=('fp32', 'amp'), default='fp32',
                   help=argparse.SUPPRESS)
    p.add_argument('--time-budget', type=float, default=420.0,
                   help='seconds after which remaining timings are skipped')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bench_train:
        return bench_train_main(args)
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
        data, dout = case.inputs(device=device, seed=len(checks) + int(time.time()))
        ref = oracle(data, case.softplus, dout)
        for bname, backend in backends.items():
            try:
                errs = check_backend(backend, case, data, dout, ref)
                ok = passes(bname, case, errs)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                errs, ok = f'error: {type(exc).__name__}: {exc}'[:200], False
            checks.append((case, bname, errs, ok))
            print(f'[gpu_check] {case.name} {case.shape} {case.dtype} {bname}: '
                  f'{"ok" if ok else "FAILED"} {errs if not ok else ""}', flush=True)
        del data
    training = training_sections(args, device)
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
    training_text = '\n'.join(training_report(training)) + '\n'
    text += training_text
    if args.out:
        with open(args.out, 'a') as f:
            f.write(training_text)
    print(text)
    failed = sum(not ok for _, _, _, ok in checks)
    print(f'[gpu_check] {len(checks) - failed}/{len(checks)} checks passed, '
          f'{training_failures(training)} training step(s) failed, '
          f'{time.time() - t_start:.0f} s' + (f'; report in {args.out}' if args.out else ''))
    return 1 if failed or training_failures(training) else 0


if __name__ == '__main__':
    sys.exit(main())
