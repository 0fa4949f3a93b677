#!/usr/bin/env python
"""Inference speed of an exported MSVMamba classifier in ONNX Runtime (and OpenVINO, when
installed) against the PyTorch CPU paths, measured in one run.

    python tools/analysis_tools/benchmark_onnx.py [--arch tiny] [--batch-sizes 8 1] \\
        [--shape 224 224] [--threads 2] [--iters 10] [--onnx FILE] [--compare FILE ...] \\
        [--int8] [--profile]
    python tools/analysis_tools/benchmark_onnx.py --int8-accuracy WORK_DIR [--threads 2]

The model is the ``--arch`` ImageNet classifier (backbone, average pooling, linear head;
random weights: speed does not depend on them), exported with dynamic N, H, W by the
export code of ``tools/deployment/pytorch2onnx.py`` (or read from ``--onnx``). Methods,
all float32 on ``--threads`` CPU threads:

* ``pytorch fused``: eager PyTorch with the fused CPU ops (``msvmamba_ops.cpu_fused``);
* ``pytorch unfused``: eager PyTorch, plain modules (``MSVMAMBA_FUSED_CPU=0``);
* ``onnxruntime``: the ONNX file on ONNX Runtime's CPU execution provider;
* ``openvino``: the same file on OpenVINO's CPU plugin (only if ``openvino`` imports);
* ``onnxruntime (NAME)``: each ``--compare`` file (e.g. an export by an earlier version of
  the code) on ONNX Runtime, for a before / after in one run;
* ``onnxruntime int8`` (``--int8``): the file dynamically quantized as ``pytorch2onnx.py
  --quantize int8`` does (int8 MatMul weights, activations quantized at run time), with
  its speed-up over the float32 file.

The methods run in turn, round by round, so that all see the same machine load, and each
timed call follows an untimed call of the same method ("settled"): ONNX Runtime's idle
workers spin-wait for a while after every run, and a PyTorch forward started right after
it was measured up to 1.3x slower at batch 1 on 2 cores (docs/deployment.md, Speed). The
medians and their ratios are printed, after each method's relative error against the
fused PyTorch path. ``--profile`` adds ONNX Runtime's per-operator profile (share of the
run time by ONNX op type, and by module and op) at the first batch size. The
implementation is projects/msvmamba_mm/speed.py and deploy.py (the timer: timing.py).

``--int8-accuracy WORK_DIR`` instead trains MSVMamba-Nano briefly on a tiny
ImageNet-format set (11 min on 2 shared cores; kept in WORK_DIR and reused; its first
run did not learn yet: docs/deployment.md, int8), exports and
quantizes it, and prints the val top-1 of PyTorch, the float32 and the int8 file and the
int8 logits' relative error (projects/msvmamba_mm/quantized.py).
"""
import argparse
import os.path as osp
import sys
import tempfile
import time

import torch

from projects.msvmamba.msvmamba import MSVMamba
from projects.msvmamba_mm.analysis import ArchClassifier
from projects.msvmamba_mm.deploy import (DEFAULT_OPSET, export, openvino_runner, ort_profile,
                                         ort_runner)
from projects.msvmamba_mm.quantized import int8_accuracy, int8_runner, int8_speed_lines
from projects.msvmamba_mm.speed import compare_runtimes, pytorch_runner, runtime_report
from projects.msvmamba_mm.timing import machine_load


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='tiny', choices=sorted(MSVMamba.arch_zoo))
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[8, 1])
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10, help='timed rounds per batch size')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--onnx', help='use this exported file (default: export to a '
                        'temporary one)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='FILE',
                        help='more exported files to time on ONNX Runtime in the same run')
    parser.add_argument('--int8', action='store_true',
                        help='also time the file dynamically quantized to int8')
    parser.add_argument('--int8-accuracy', metavar='WORK_DIR',
                        help='instead: train Nano on a tiny set in WORK_DIR, export, quantize '
                        'and compare int8 with float32 top-1 on its val split')
    parser.add_argument('--profile', action='store_true',
                        help="print ONNX Runtime's time share per op type")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for given in filter(None, [args.onnx, *args.compare]):
        if not osp.isfile(given):
            print(f'error: {given}: no such ONNX file (export one with '
                  'tools/deployment/pytorch2onnx.py, or leave out --onnx to export the '
                  f'{args.arch} classifier to a temporary file)', file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    if args.int8_accuracy:
        int8_accuracy(args.int8_accuracy, args.threads)
        return 0
    torch.manual_seed(0)
    model = ArchClassifier(args.arch).eval()
    path = args.onnx
    if path is None:  # the classifier as pytorch2onnx.py exports models (dynamic N, H, W)
        path = osp.join(tempfile.mkdtemp(), f'msvmamba_{args.arch}.onnx')
        start = time.time()
        export(model, 'plain', path, torch.randn(1, 3, *args.shape), dynamic=True,
               opset=DEFAULT_OPSET, metadata={})
        print(f'exported {args.arch} classifier to {path} in {time.time() - start:.0f} s')
    runners = {'pytorch fused': pytorch_runner(model, True),
               'pytorch unfused': pytorch_runner(model, False),
               'onnxruntime': ort_runner(path, args.threads)}
    vino = openvino_runner(path, args.threads)
    if vino is not None:
        runners['openvino'] = vino
    if args.int8:
        runners['onnxruntime int8'] = int8_runner(path, args.threads)
    for other in args.compare:
        runners[f'onnxruntime ({osp.basename(other)})'] = ort_runner(other, args.threads)
    print(f'{args.arch} classifier, {tuple(args.shape)}, float32, {args.threads} threads '
          f'(torch and onnxruntime), torch {torch.__version__}, onnxruntime '
          f'{__import__("onnxruntime").__version__}'
          + ('' if vino is None else f', openvino {__import__("openvino").__version__}')
          + f'; {machine_load()}')
    for batch in args.batch_sizes:
        row = compare_runtimes(runners, batch, args.shape, args.iters, args.warmup)
        print('\n'.join(runtime_report(row) + (int8_speed_lines(row) if args.int8 else [])))
        if args.profile and batch == args.batch_sizes[0]:
            print('\n'.join(ort_profile(path, args.threads, torch.randn(batch, 3, *args.shape))))
    print(f'{machine_load()} at the end')
    return 0


if __name__ == '__main__':
    sys.exit(main())
