#!/usr/bin/env python
"""FLOPs and parameters of a model, counted with mmengine.analysis (fvcore conventions).

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--backbone-only]
        [--cfg-options K=V ...] [--show-table]
    python tools/analysis_tools/get_flops.py --arch tiny [--shape 224 224] [--num-classes N]

One multiply-add counts as one FLOP. The selective scan counts 9*B*L*D*N + B*D*L (the
handle comes from msvmamba_ops), as upstream MSVMamba's numbers do; elementwise ops
(activations, flips, additions) and ops without a counter (RoIAlign, NMS) count nothing.
``--arch`` counts the classification model (backbone, average pooling, linear head)
without a config.

For a config, the whole model is counted as mmdet's and mmseg's own get_flops tools count
it: its 'tensor' forward with the data samples of one H x W image. For two-stage mmdet
detectors the RPN proposes from the features and the RoI heads run on those proposals
(at most ``test_cfg.rpn.max_per_img``; the number is printed); mmseg counts backbone,
neck and decode head (the auxiliary head only trains). Input and initial weights come
from a fixed seed, so a count is reproducible (mmdet's tool feeds dataset images instead).
Parameters are those of the whole model, auxiliary heads included, as mmdet and mmseg
print them. ``--backbone-only`` counts the backbone alone. The implementation is
projects/msvmamba_mm/analysis.py.
"""
import argparse
import sys

import torch
from mmengine.config import DictAction

from projects.msvmamba.msvmamba import MSVMamba
from projects.msvmamba_mm.analysis import SEED, ArchClassifier, build_from_config, count_flops
from projects.msvmamba_mm.tooling import image_shape, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?', help='config file (or use --arch)')
    parser.add_argument('--arch', choices=sorted(MSVMamba.arch_zoo),
                        help='count an MSVMamba classifier of this arch, no config needed')
    parser.add_argument('--num-classes', type=int, default=1000, help='with --arch')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input H W (one value: square)')
    parser.add_argument('--backbone-only', action='store_true',
                        help="count the config's backbone alone (FLOPs and parameters)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings, as in tools/train.py')
    parser.add_argument('--show-table', action='store_true',
                        help='print the per-module table')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either CONFIG or --arch')
    if args.arch and args.backbone_only:
        parser.error('--backbone-only needs a CONFIG (--arch counts the classifier)')
    args.shape = image_shape(parser, args.shape)
    return args


def run(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(SEED)  # the initial weights decide the RPN's proposals
    if args.arch:
        model = ArchClassifier(args.arch, args.num_classes)
        name = f'MSVMamba {args.arch} classifier ({args.num_classes} classes)'
    else:
        model = build_from_config(args.config, args.cfg_options)
        name = args.config
    result = count_flops(model, args.shape, args.show_table, args.backbone_only)
    if 'table' in result:
        print(result['table'])
    print(f'{name}\ncounted: {result["counted"]}\ninput shape: (1, 3, {args.shape[0]}, '
          f'{args.shape[1]})\nFlops: {result["flops"] / 1e9:.3f} G\n'
          f'Params: {result["params"] / 1e6:.3f} M')


def main(argv=None) -> int:
    """``run`` with a config's errors as one ``error:`` line and exit status 2."""
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
