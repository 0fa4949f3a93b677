#!/usr/bin/env python
"""Export a model of a config to ONNX (standard ops only) and check it with ONNX Runtime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out FILE \\
        [--shape H W] [--dynamic] [--opset 18] [--batch-size 1] [--quantize int8] \\
        [--cfg-options K=V ...]

Classification and segmentation configs export ``model(x, mode='tensor')`` (the logits),
detection configs ``model.extract_feat(x)`` (backbone + neck features; heads and NMS stay
in PyTorch). The input ``input`` is a float32 (N, 3, H, W) batch normalised as the
config's ``data_preprocessor`` does; the file's metadata records how. ``--dynamic`` makes
N, H and W dynamic. The tool runs ``onnx.checker``, prints the file size and compares ONNX
Runtime with PyTorch on a random input of the export shape. ``--quantize int8`` also
writes FILE's dynamically quantized version (int8 MatMul weights, activations quantized
at run time; standard ONNX ops) as FILE with ``.int8.onnx`` for ``.onnx``. The implementation is
projects/msvmamba_mm/deploy.py; details in docs/deployment.md.
"""
import argparse
import sys

from projects.msvmamba_mm.deploy import (DEFAULT_OPSET, MIN_OPSET, QUANTIZATIONS, export_config,
                                         int8_path)
from projects.msvmamba_mm.tooling import add_config_arguments, image_shape, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='tools/deployment/pytorch2onnx.py',
                                     description=__doc__.split('\n\n')[0])
    add_config_arguments(parser)
    parser.add_argument('checkpoint', help='checkpoint file: mmengine (tools/train.py), '
                        'a state dict, or for classification an official release file')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        metavar='SIZE', help='export input H W (one value: square); '
                        'default 224 224')
    parser.add_argument('--batch-size', type=int, default=1, help='export batch size')
    parser.add_argument('--dynamic', action='store_true',
                        help='make batch, height and width dynamic')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset (>= {MIN_OPSET}; default {DEFAULT_OPSET})')
    parser.add_argument('--quantize', choices=QUANTIZATIONS,
                        help='also write a dynamically quantized version of --out: int8 '
                        'MatMul weights, activations quantized at run time (onnxruntime.'
                        f'quantization), to {int8_path("FILE.onnx")}')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the ONNX Runtime vs PyTorch parity check')
    args = parser.parse_args(argv)
    args.shape = image_shape(parser, args.shape)
    return args


def run(argv=None) -> None:
    args = parse_args(argv)
    export_config(args.config, args.checkpoint, args.out, args.shape, args.batch_size,
                  args.dynamic, args.opset, not args.no_check, args.cfg_options,
                  args.quantize)


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
