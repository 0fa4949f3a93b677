#!/usr/bin/env python
"""The GPU proof in one call: the GPU tests, the scan and backbone benchmarks, one report.

    python tools/analysis_tools/gpu_check.py [--out docs/gpu_check.md] [--batch 128]

1. ``pytest -m gpu`` (tests/gpu: the CUDA and Triton scans against the float64 oracle on
   every ``msvmamba_ops.testing.GPU_CASES`` case, the backbone on the GPU against the CPU);
2. ``tools/analysis_tools/benchmark_scan.py --device cuda``: the scan kernels at the
   MSVMamba-Tiny shapes (ms, GB/s against a device-to-device copy);
3. ``tools/analysis_tools/benchmark.py --device cuda``: the MSVMamba-Tiny classifier per
   scan backend, inference and training, fp32 and AMP (img/s, peak memory).

Each step is a subprocess with a time limit (a failure is reported, the others still run);
the markdown report (``--out``, replacing that file) holds the environment, every command,
a table per step and each step's status. ``--dry-run`` runs the same steps on the CPU at
toy sizes (the GPU tests skip there): what CI checks of this glue.
"""
import argparse
import datetime
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools' / 'analysis_tools'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', help='markdown report to write (e.g. docs/gpu_check.md)')
    p.add_argument('--dry-run', action='store_true',
                   help='CPU, toy sizes: check this glue without a GPU (CI)')
    p.add_argument('--backends', default='cuda,triton', help='scan backends to time')
    p.add_argument('--batch', type=int, default=128, help='batch of the timings')
    p.add_argument('--iters', type=int, default=20, help='timed calls per measurement')
    p.add_argument('--step-timeout', type=float, default=600, help='seconds per step')
    return p.parse_args(argv)


def run_step(cmd, timeout: float) -> dict:
    """Run one command in the repository; ``dict(command, status, seconds, output)``."""
    shown = ' '.join(str(c) for c in cmd).replace(sys.executable, 'python')
    print(f'[gpu_check] {shown}', flush=True)
    start = time.time()
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO, timeout=timeout, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = proc.stdout
        status = 'ok' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b'').decode()
        status = f'TIMED OUT after {timeout:.0f} s'
    if status != 'ok':
        print(output[-3000:], flush=True)
    return dict(command=shown, status=status, seconds=time.time() - start, output=output)


def table(header, rows) -> list:
    return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def gpu_tests(args, tmp: Path) -> tuple:
    """``pytest -m gpu``; its step and a table of every test's outcome."""
    junit = tmp / 'gpu_tests.xml'
    paths = ['tests/gpu'] if args.dry_run else []  # the GPU machine collects everything
    step = run_step([sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider',
                     f'--junitxml={junit}', *paths], args.step_timeout)
    rows = []
    if junit.is_file():
        for case in ET.parse(junit).iter('testcase'):
            outcome = next((c.tag for c in case if c.tag in ('failure', 'error', 'skipped')),
                           'passed')
            detail = next((c.get('message', '') for c in case), '')[:120].replace('|', '/')
            rows.append([f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                         outcome if outcome == 'passed' else f'**{outcome}** {detail}',
                         f"{float(case.get('time', 0)):.1f}"])
    if step['status'] == 'FAILED (exit 5)':  # pytest: no test was collected
        step['status'] = 'FAILED (no test marked gpu was collected)'
    return step, table(['test', 'result', 'seconds'], rows)


def scan_benchmark(args) -> tuple:
    if args.dry_run:
        cmd = ['--lengths', 64, '--dim', 8, '--repeats', 1, '--long-ref-repeats', 1]
    else:
        cmd = ['--device', 'cuda', '--backends', args.backends, '--batch', args.batch,
               '--repeats', args.iters]
    step = run_step([sys.executable, TOOLS / 'benchmark_scan.py', *cmd], args.step_timeout)
    lines = [ln for ln in step['output'].splitlines() if ln.startswith(('|', 'selective scan'))]
    if args.dry_run:  # the CPU ratios: a plain-text table
        lines = ['```', *step['output'].strip().splitlines(), '```'] if lines else []
    if args.dry_run and step['status'] == 'FAILED (exit 1)' and lines:
        step['status'] = 'ok (CPU targets are not held at toy sizes)'
    return step, lines or ['(no table in the output)']


def backbone_benchmark(args) -> tuple:
    """benchmark.py per backend, inference and training, fp32 and AMP; one table."""
    device = 'cpu' if args.dry_run else 'cuda'
    size, batch = ('32', 1) if args.dry_run else ('224', args.batch)
    arch = 'nano' if args.dry_run else 'tiny'
    steps, rows = [], []
    for backend in (['cpu'] if args.dry_run else args.backends.split(',')):
        for train in (False, True):
            for amp in ([False] if args.dry_run else [False, True]):
                step = run_step([sys.executable, TOOLS / 'benchmark.py', '--arch', arch,
                                 '--device', device, '--scan-backend', backend,
                                 '--batch-size', batch, '--shape', size, size,
                                 '--iters', 1 if args.dry_run else args.iters,
                                 '--warmup', 0 if args.dry_run else 2,
                                 *(['--train'] if train else []),
                                 *(['--amp'] if amp else [])], args.step_timeout)
                speed = re.search(r'([\d.]+) img/s \(median ([\d.]+) ms', step['output'])
                memory = re.search(r'peak memory: (\d+) MiB', step['output'])
                if step['status'] == 'ok' and not (speed and memory):
                    step['status'] = 'FAILED (no img/s or peak memory in the output)'
                rows.append([backend, 'training' if train else 'inference',
                             'AMP' if amp else 'fp32', speed.group(1) if speed else '-',
                             speed.group(2) if speed else '-', memory.group(1) if memory else '-',
                             step['status']])
                steps.append(step)
    header = ['backend', 'mode', 'precision', 'img/s', 'ms per batch', 'peak MiB', 'status']
    return steps, [f'MSVMamba-{arch.title()} classifier, batch {batch}, {size}x{size}, '
                   f'{device}; training = forward, backward, AdamW step; AMP = autocast '
                   f'({"bf16" if args.dry_run else "fp16"}).', ''] + table(header, rows)


def environment(device: str) -> list:
    rows = [['date', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')],
            ['python', platform.python_version()],
            ['torch', f'{torch.__version__} (CUDA {torch.version.cuda})']]
    if device == 'cuda':
        prop = torch.cuda.get_device_properties(0)
        rows.append(['GPU', f'{prop.name} (sm_{prop.major}{prop.minor}, '
                     f'{prop.multi_processor_count} SMs, {prop.total_memory / 2**30:.0f} GiB)'])
    else:
        rows.append(['GPU', f'none (dry run on the CPU: {platform.machine()})'])
    return table(['item', 'value'], rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = 'cpu' if args.dry_run else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        print('[gpu_check] no CUDA device visible; --dry-run checks this tool on a CPU',
              file=sys.stderr)
        return 2
    import tempfile
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
        test_step, test_table = gpu_tests(args, Path(tmp))
    scan_step, scan_lines = scan_benchmark(args)
    backbone_steps, backbone_lines = backbone_benchmark(args)
    steps = [test_step, scan_step, *backbone_steps]
    command = 'python tools/analysis_tools/gpu_check.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    lines = ['# GPU check', '', f'Generated by `{command}`.', '', *environment(device),
             '', '## GPU tests (`pytest -m gpu`)', '', *test_table,
             '', '## Scan kernels', '', *scan_lines,
             '', '## Backbone speed', '', *backbone_lines,
             '', '## Steps', '', *table(['command', 'status', 'seconds'],
                                        [[f"`{s['command']}`", s['status'], f"{s['seconds']:.0f}"]
                                         for s in steps])]
    text = '\n'.join(lines) + '\n'
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    failed = [s for s in steps if not s['status'].startswith('ok')]
    print(f'[gpu_check] {len(steps) - len(failed)}/{len(steps)} steps ok'
          + (f'; report in {args.out}' if args.out else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
