#!/usr/bin/env python
"""Curves and training-time statistics from mmengine's scalar logs.

mmengine writes one JSON object per line to ``<work_dir>/<timestamp>/vis_data/
scalars.json`` (also ``<timestamp>.json``): training lines carry ``lr``, ``loss*``,
``time``, ``data_time``, ``iter``/``epoch`` and ``step``; validation lines the metrics
(e.g. ``coco/bbox_mAP``, ``mIoU``, ``accuracy/top1``) and the ``step`` they were computed
at.

    python tools/analysis_tools/analyze_logs.py plot_curve LOG.json [LOG2.json ...] \\
        [--keys loss bbox_mAP ...] [--legend A B ...] [--title T] [--out curves.png]
    python tools/analysis_tools/analyze_logs.py cal_train_time LOG.json [...]

A key matches a logged name exactly or as its last ``/`` part (``bbox_mAP`` finds
``coco/bbox_mAP``). ``plot_curve`` draws one panel per key against the step; without
``--out`` it writes ``<log folder>/curves.png``.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence

import numpy as np


def load_log(path: str) -> List[dict]:
    """The JSON lines of an mmengine scalar log."""
    if not osp.isfile(path):
        raise SystemExit(f'error: log file not found: {path}')
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f'error: {path}:{number} is not a JSON line ({e}); '
                                 'expected mmengine vis_data/scalars.json') from e
    return records


def _is_train(record: dict) -> bool:
    return 'lr' in record or any(k.startswith('loss') for k in record)


def resolve_key(key: str, names: Sequence[str]) -> str:
    """The logged name ``key`` means: itself, else the one whose last part it is."""
    if key in names:
        return key
    found = sorted(n for n in names if n.split('/')[-1] == key)
    if len(found) == 1:
        return found[0]
    if found:
        raise SystemExit(f'error: key {key!r} is ambiguous: {", ".join(found)}')
    raise SystemExit(f'error: key {key!r} is not in the log; logged: '
                     f'{", ".join(sorted(names))}')


def series(records: List[dict], key: str) -> Dict[str, np.ndarray]:
    """``{'x': steps, 'y': values}`` of ``key`` (records that lack it skipped)."""
    xs, ys = [], []
    for r in records:
        if key in r:
            xs.append(r.get('step', r.get('iter', len(xs) + 1)))
            ys.append(r[key])
    return dict(x=np.asarray(xs, float), y=np.asarray(ys, float))


def plot_curve(args) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    logs = [load_log(p) for p in args.json_logs]
    legend = args.legend or [osp.basename(osp.dirname(osp.dirname(osp.abspath(p))))
                             or p for p in args.json_logs]
    if len(legend) != len(logs):
        raise SystemExit(f'error: --legend needs {len(logs)} names, got {len(legend)}')
    fig, axes = plt.subplots(len(args.keys), 1, figsize=(7, 2.6 * len(args.keys)),
                             squeeze=False, sharex=True)
    for ax, key in zip(axes[:, 0], args.keys):
        for records, name in zip(logs, legend):
            names = sorted({k for r in records for k in r})
            logged = resolve_key(key, names)
            s = series(records, logged)
            style = '-' if len(s['x']) > 3 else 'o-'
            ax.plot(s['x'], s['y'], style, label=name if len(logs) > 1 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if len(logs) > 1:
            ax.legend(fontsize='small')
    axes[-1, 0].set_xlabel('iteration (step)')
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out = args.out or osp.join(osp.dirname(osp.abspath(args.json_logs[0])), 'curves.png')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f'saved the curves of {", ".join(args.keys)} to {out}')
    return out


def train_time_stats(records: List[dict]) -> dict:
    """Seconds per logged training interval: mean, std, slowest/fastest and the total
    estimated from the last step."""
    train = [r for r in records if _is_train(r) and 'time' in r]
    if not train:
        raise SystemExit('error: the log has no training records with a "time" entry')
    times = np.asarray([r['time'] for r in train], float)
    steps = [r.get('step', r.get('iter', i + 1)) for i, r in enumerate(train)]
    return dict(
        records=len(train), mean=float(times.mean()), std=float(times.std()),
        slowest_step=int(steps[int(times.argmax())]), slowest=float(times.max()),
        fastest_step=int(steps[int(times.argmin())]), fastest=float(times.min()),
        last_step=int(steps[-1]), total=float(times.mean() * steps[-1]))


def cal_train_time(args) -> List[dict]:
    stats = []
    for path in args.json_logs:
        s = train_time_stats(load_log(path))
        stats.append(s)
        print(f'{"-" * 5} {path}\n'
              f'slowest step {s["slowest_step"]}: {s["slowest"]:.4f} s/iter\n'
              f'fastest step {s["fastest_step"]}: {s["fastest"]:.4f} s/iter\n'
              f'time std over logged steps: {s["std"]:.4f}\n'
              f'average: {s["mean"]:.4f} s/iter, {s["last_step"]} iterations: '
              f'about {s["total"] / 60:.1f} min')
    return stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/analysis_tools/analyze_logs.py',
        description='Plot curves / compute training time from mmengine scalar logs '
        '(vis_data/scalars.json).')
    sub = parser.add_subparsers(dest='task', required=True)
    plot = sub.add_parser('plot_curve', help='plot logged values against the step')
    plot.add_argument('json_logs', nargs='+', help='vis_data/scalars.json files')
    plot.add_argument('--keys', nargs='+', default=['loss'],
                      help='logged names to plot, one panel each (default: loss)')
    plot.add_argument('--legend', nargs='+', help='one name per log')
    plot.add_argument('--title', help='figure title')
    plot.add_argument('--out', help='PNG file (default: curves.png next to the first log)')
    times = sub.add_parser('cal_train_time', help='training time per iteration')
    times.add_argument('json_logs', nargs='+', help='vis_data/scalars.json files')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    {'plot_curve': plot_curve, 'cal_train_time': cal_train_time}[args.task](args)


if __name__ == '__main__':
    sys.exit(main())
