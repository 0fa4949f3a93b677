#!/usr/bin/env python
"""FLOPs and parameters of a model, counted with mmengine.analysis (fvcore conventions).

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--cfg-options K=V ...]
    python tools/analysis_tools/get_flops.py --arch tiny [--shape 224 224] [--num-classes N]

One multiply-add counts as one FLOP. The selective scan counts 9*B*L*D*N + B*D*L (the
handle comes from msvmamba_ops), as upstream MSVMamba's numbers do; elementwise ops
(activations, flips, additions) count nothing. ``--arch`` counts the classification
model (backbone, average pooling, linear head) without a config. For a config, the model
runs its 'tensor' forward (mmpretrain: logits; mmseg: segmentation logits); when that
needs annotations (two-stage mmdet detectors) backbone and neck are counted, and said so.
"""
import argparse
import importlib
import os.path as osp
import sys
from typing import Optional

import torch
import torch.nn as nn

# this checkout's code first, whatever else is installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from msvmamba_ops.flops import MSVMAMBA_FLOP_HANDLES  # noqa: E402
from projects.msvmamba.msvmamba import MSVMamba  # noqa: E402
from projects.msvmamba_mm.tooling import load_scoped_config, run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?', help='config file (or use --arch)')
    parser.add_argument('--arch', choices=sorted(MSVMamba.arch_zoo),
                        help='count an MSVMamba classifier of this arch, no config needed')
    parser.add_argument('--num-classes', type=int, default=1000, help='with --arch')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input H W (one value: square)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config settings, as in tools/train.py')
    parser.add_argument('--show-table', action='store_true',
                        help='print the per-module table')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either CONFIG or --arch')
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    elif len(args.shape) != 2:
        parser.error('--shape takes H W or a single size')
    return args


class ArchClassifier(nn.Module):
    """MSVMamba (classification mode) + average pooling + linear head: the model the
    upstream FLOP and parameter figures describe."""

    def __init__(self, arch: str, num_classes: int = 1000):
        super().__init__()
        self.backbone = MSVMamba(arch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.backbone.dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.pool(self.backbone(x)[-1]).flatten(1))


class TensorForward(nn.Module):
    """Traceable wrapper: ``fn(model, x)`` as the forward of a module holding ``model``."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


def build_from_config(path: str, cfg_options: Optional[dict]) -> nn.Module:
    """The model of a config, built in the registry of its ``default_scope`` (the config
    is loaded as tools/train.py loads it: missing files, unknown scopes and bad
    ``--cfg-options`` are one-line errors)."""
    cfg, scope = load_scoped_config(path, cfg_options)
    registry = importlib.import_module(f'{scope.package}.registry')
    return registry.MODELS.build(cfg.model)


def count(model: nn.Module, shape, show_table: bool = False) -> dict:
    """FLOPs (at batch 1) and parameters of ``model``: an :class:`ArchClassifier`, or an
    OpenMMLab model, counted through its 'tensor' forward if that runs without
    annotations, else through backbone (and neck)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    from mmengine.analysis.print_helper import complexity_stats_table
    model.eval()
    inputs = (torch.randn(1, 3, *shape), )

    def analyse(traced: nn.Module):
        analyzer = FlopAnalyzer(traced, inputs).set_op_handle(**MSVMAMBA_FLOP_HANDLES)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            return analyzer, analyzer.total()

    if isinstance(model, ArchClassifier):
        (analyzer, flops), what = analyse(model), 'classifier'
    else:
        try:
            analyzer, flops = analyse(TensorForward(model, lambda m, x: m(x, mode='tensor')))
            what = 'whole model (tensor forward)'
        except Exception as error:  # e.g. two-stage detectors need data samples
            if not hasattr(model, 'extract_feat'):
                raise
            analyzer, flops = analyse(TensorForward(model, lambda m, x: m.extract_feat(x)))
            reason = f'{type(error).__name__}: {str(error).splitlines()[0][:100]}'
            what = f'backbone and neck only (the tensor forward failed: {reason})'
    result = dict(flops=flops, params=parameter_count(model)[''], counted=what)
    if show_table:
        result['table'] = complexity_stats_table(analyzer, max_depth=3)
    return result


def run(argv=None) -> None:
    args = parse_args(argv)
    if args.arch:
        model = ArchClassifier(args.arch, args.num_classes)
        name = f'MSVMamba {args.arch} classifier ({args.num_classes} classes)'
    else:
        model = build_from_config(args.config, args.cfg_options)
        name = args.config
    result = count(model, args.shape, args.show_table)
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
