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
print them. ``--backbone-only`` counts the backbone alone.
"""
import argparse
import importlib
import os.path as osp
import sys
from typing import List, Optional

import torch
import torch.nn as nn

# this checkout's code first, whatever else is installed
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmengine.config import DictAction  # noqa: E402

from msvmamba_ops.flops import MSVMAMBA_FLOP_HANDLES  # noqa: E402
from projects.msvmamba.msvmamba import MSVMamba  # noqa: E402
from projects.msvmamba_mm.errors import UserError  # noqa: E402
from projects.msvmamba_mm.tooling import image_shape, load_scoped_config, run_main  # noqa: E402

SEED = 0


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


def image_data_samples(model: nn.Module, shape) -> Optional[List]:
    """Data samples of one ``shape`` image, with the metainfo the data preprocessor of
    an mmdet/mmseg model sets (no padding: H and W are taken as given); None for other
    models (mmpretrain's tensor forward needs none)."""
    h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                batch_input_shape=(h, w))
    package = type(model).__module__.split('.')[0]
    if package == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=dict(meta, scale_factor=(1.0, 1.0)))]
    if package == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    return None


def _roi_counter(model: nn.Module) -> dict:
    """Records how many RoIs the first box RoI extractor of a two-stage detector gets
    (the RPN's proposals); an empty dict for other models."""
    seen = {}
    extractor = getattr(getattr(model, 'roi_head', None), 'bbox_roi_extractor', None)
    if isinstance(extractor, nn.ModuleList):  # Cascade: one per stage
        extractor = extractor[0]
    def record(module, args):  # a pre-hook that returns None leaves the inputs as they are
        seen.setdefault('rois', int(args[1].shape[0]))

    if extractor is not None:
        extractor.register_forward_pre_hook(record)
    return seen


def count(model: nn.Module, shape, show_table: bool = False,
          backbone_only: bool = False) -> dict:
    """FLOPs (at batch 1) and parameters of ``model``: an :class:`ArchClassifier`, or
    an OpenMMLab model counted whole through its 'tensor' forward with data samples
    (``backbone_only``: its backbone alone)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    from mmengine.analysis.print_helper import complexity_stats_table
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model).eval()  # SyncBN heads: as mmdet's tool does
    torch.manual_seed(SEED)
    inputs = (torch.randn(1, 3, *shape), )
    rois = {}
    if isinstance(model, ArchClassifier):
        traced, counted, what = model, model, 'classifier'
    elif backbone_only:
        traced = TensorForward(model.backbone, lambda m, x: m(x))
        counted, what = model.backbone, 'backbone only'
    else:
        samples = image_data_samples(model, shape)
        rois = _roi_counter(model)
        traced = TensorForward(model, lambda m, x: m(x, samples, mode='tensor'))
        counted, what = model, 'whole model (tensor forward with data samples)'
    analyzer = FlopAnalyzer(traced, inputs).set_op_handle(**MSVMAMBA_FLOP_HANDLES)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    try:
        with torch.no_grad():
            flops = analyzer.total()
    except Exception as error:
        if isinstance(model, ArchClassifier) or backbone_only:
            raise
        raise UserError(f'the whole-model forward of {type(model).__name__} failed to '
                        f'trace ({type(error).__name__}: {str(error).splitlines()[0]}); '
                        'count the backbone with --backbone-only') from error
    if 'rois' in rois:
        what += f", RoI heads on {rois['rois']} RPN proposals"
    result = dict(flops=flops, params=parameter_count(counted)[''], counted=what)
    if show_table:
        result['table'] = complexity_stats_table(analyzer, max_depth=3)
    return result


def run(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(SEED)  # the initial weights decide the RPN's proposals
    if args.arch:
        model = ArchClassifier(args.arch, args.num_classes)
        name = f'MSVMamba {args.arch} classifier ({args.num_classes} classes)'
    else:
        model = build_from_config(args.config, args.cfg_options)
        name = args.config
    result = count(model, args.shape, args.show_table, args.backbone_only)
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
