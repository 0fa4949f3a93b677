#!/usr/bin/env python
"""Compare MSVMamba with the backbones users pick instead, in one run on this machine.

    python tools/analysis_tools/compare_backbones.py --task {cls,det,seg} \
        --models NAME|CONFIG ... --shapes S|HxW ... [--batch-size B] [--iters N] \
        [--warmup W] [--threads T] [--device cpu|cuda] [--amp] [--train] \
        [--mem-budget MB] --out DIR

Per model and size: parameters, FLOPs per image (the get_flops.py counter, whole model,
the selective scan included), inference latency (median) and img/s, peak memory growth,
with --train one training step's time and memory, and the published accuracy of the
config beside them; per model the exponent k of latency / FLOPs / memory ∝ pixels^k.
The models alternate forward by forward in this one process. Writes results.json,
results.csv, results.md and scaling.png into --out. The implementation is
projects/msvmamba_mm/compare.py.

On a machine shared with other work, run with OMP_WAIT_POLICY=PASSIVE: OpenMP threads
that spin while waiting made 2-thread forwards 8-11x slower on a 2-core machine at load
average 9 (the setting is recorded with the results).
"""
import argparse
import sys

from projects.msvmamba_mm import compare
from projects.msvmamba_mm.tooling import run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', required=True, choices=compare.TASKS)
    parser.add_argument('--models', nargs='+', required=True, metavar='NAME|CONFIG',
                        help=f'short names ({", ".join(compare.SHORT_NAMES)}) or config '
                        'files (also package::path, e.g. mmdet::swin/...py)')
    parser.add_argument('--shapes', nargs='+', required=True, metavar='S|HxW',
                        help='input sizes: S (square) or HxW, e.g. 224 448 or 800x1333')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--iters', type=int, default=10,
                        help='timed rounds (each model once per round; the median is kept)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--amp', action='store_true',
                        help='autocast (bf16 on CPU, fp16 on CUDA), as benchmark.py')
    parser.add_argument('--train', action='store_true',
                        help='also one training step (forward, backward, AdamW step)')
    parser.add_argument('--mem-budget', type=float, default=None, metavar='MB',
                        help='report the largest size whose peak memory fits; a model over '
                        'it is not run at larger sizes')
    parser.add_argument('--out', required=True, help='folder for the four outputs')
    return parser.parse_args(argv)


def run(argv=None) -> None:
    args = parse_args(argv)
    compare.run(args.task, args.models, args.shapes, args.out, batch_size=args.batch_size,
                iters=args.iters, warmup=args.warmup, threads=args.threads,
                device=args.device, amp=args.amp, train=args.train,
                mem_budget=args.mem_budget)


def main(argv=None) -> int:
    """``run`` with mistakes as one ``error:`` line and exit status 2."""
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
