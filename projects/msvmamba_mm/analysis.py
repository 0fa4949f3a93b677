"""FLOPs and parameters of a model, counted with mmengine.analysis (fvcore conventions),
and the model wrappers the counting and the speed tools share.

One multiply-add counts as one FLOP. The selective scan counts 9*B*L*D*N + B*D*L (the
handle comes from msvmamba_ops), as upstream MSVMamba's numbers do; elementwise ops
(activations, flips, additions) and ops without a counter (RoIAlign, NMS) count nothing.

For an OpenMMLab model the whole model is counted as mmdet's and mmseg's own get_flops
tools count it: its 'tensor' forward with the data samples of one H x W image. For
two-stage mmdet detectors the RPN proposes from the features and the RoI heads run on
those proposals (at most ``test_cfg.rpn.max_per_img``; the number is reported); mmseg
counts backbone, neck and decode head (the auxiliary head only trains). Input and
initial weights come from a fixed seed (:data:`SEED`), so a count is reproducible.
Parameters are those of the whole model, auxiliary heads included.

Public API:

* :class:`ArchClassifier` ``(arch, num_classes=1000)``: MSVMamba + pooling + linear head;
* :class:`TensorForward` ``(model, fn)``: ``fn(model, x)`` as a one-input module;
* :func:`build_from_config` ``(path, cfg_options=None)``: a config's model in its scope;
* :func:`tensor_forward` ``(model, device='cpu')``: a one-input module of an OpenMMLab
  model (its 'tensor' forward, or ``extract_feat`` for two-stage detectors), for timing;
* :func:`image_data_samples` ``(model, shape)``;
* :func:`count_flops` ``(model, shape, show_table=False, backbone_only=False)`` ->
  ``dict(flops, params, counted[, table])``.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from msvmamba_ops.flops import MSVMAMBA_FLOP_HANDLES
from projects.msvmamba.msvmamba import MSVMamba

from .errors import UserError
from .tooling import build_scoped_model, load_scoped_config

SEED = 0


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


def build_from_config(path: str, cfg_options: Optional[dict] = None) -> nn.Module:
    """The model of a config, built in the registry of its ``default_scope`` (the config
    is loaded as tools/train.py loads it: missing files, unknown scopes and bad
    ``--cfg-options`` are one-line errors)."""
    return build_scoped_model(*load_scoped_config(path, cfg_options))


def tensor_forward(model: nn.Module, device: str = 'cpu') -> nn.Module:
    """``model`` as a one-input module for timing: the 'tensor' forward (classifiers and
    segmentors: the whole network), or ``extract_feat`` (backbone + neck) for models whose
    'tensor' forward needs data samples (two-stage detectors). Decided by one probe forward
    of a 64 x 64 image."""
    probe = torch.randn(1, 3, 64, 64, device=device)
    try:
        with torch.inference_mode():
            model(probe, mode='tensor')
        return TensorForward(model, lambda m, x: m(x, mode='tensor'))
    except Exception:  # two-stage detectors need data samples: backbone + neck
        return TensorForward(model, lambda m, x: m.extract_feat(x))


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


def count_flops(model: nn.Module, shape: Sequence[int], show_table: bool = False,
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
