#!/usr/bin/env python
"""Run a trained model on your own images and save what it predicts.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR \\
        [--device cpu|cuda] [--score-thr 0.3] [--topk 5] [--amp] [--cfg-options KEY=VALUE ...]
    python tools/infer.py CONFIG MODEL.onnx INPUT [INPUT ...] --out-dir DIR \
        --backend onnxruntime [--threads N]

INPUT: image files or folders (their images, not recursive). Detection, segmentation and
classification configs (by ``default_scope``) draw to ``DIR/vis/`` and write predictions
beside; ``--backend onnxruntime`` runs the network from a file of
``tools/deployment/pytorch2onnx.py`` (classification, segmentation) with the same pre- and
post-processing. The implementation is projects/msvmamba_mm/inference.py.
"""
import argparse
import sys

from projects.msvmamba_mm.inference import infer
from projects.msvmamba_mm.tooling import add_config_arguments, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='tools/infer.py',
                                     description=__doc__.split('\n\n')[0])
    add_config_arguments(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files or folders')
    parser.add_argument('--out-dir', required=True, help='folder for the results')
    parser.add_argument('--device', help='cpu, cuda, cuda:1, ... (default: cuda if '
                        'available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes with at least this score (default 0.3)')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: classes to report (default 5)')
    parser.add_argument('--amp', action='store_true',
                        help='backbone + neck under autocast: bf16 on the CPU (the fused CPU '
                        'ops stay on with avx512_bf16/AMX), float16 on CUDA; heads float32')
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime'), default='pytorch',
                        help='pytorch (CHECKPOINT: a checkpoint) or onnxruntime (CHECKPOINT: '
                        'an .onnx file from tools/deployment/pytorch2onnx.py)')
    parser.add_argument('--threads', type=int, default=None,
                        help='onnxruntime: intra-op threads (default: its own choice)')
    return parser.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    infer(args.config, args.checkpoint, args.inputs, args.out_dir, args.device,
          args.score_thr, args.topk, args.backend, args.threads, args.cfg_options, args.amp)


def main(argv=None) -> int:
    return run_main(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
