"""Every config under configs/ parses and builds its model (and pipelines) on CPU.

A config that does not build fails here. Building a model constructs the modules
only: no checkpoint is read (that is ``init_weights``), so the configs build without
the pretrained files. The forward check runs the smallest model only.
"""
import copy
import importlib
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs'


def experiment_configs():
    """Every config file but the ``_base_`` fragments (examples included)."""
    return sorted(p for p in CONFIG_DIR.rglob('*.py')
                  if '_base_' not in p.relative_to(CONFIG_DIR).parts)


CONFIGS = experiment_configs()
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]
SCOPES = ('mmpretrain', 'mmdet', 'mmseg')
PIPELINES = ('train_pipeline', 'test_pipeline', 'tta_pipeline')

_cache = {}


def load(path) -> Config:
    path = CONFIG_DIR / path
    if path not in _cache:
        _cache[path] = Config.fromfile(str(path))
    return copy.deepcopy(_cache[path])


def registry(cfg: Config, name: str):
    """``name`` registry (MODELS, TRANSFORMS) of the package the config's scope names."""
    assert cfg.get('default_scope') in SCOPES, cfg.get('default_scope')
    return getattr(importlib.import_module(f'{cfg.default_scope}.registry'), name)


def build_model(cfg: Config):
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # what mmengine's Runner does
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return registry(cfg, 'MODELS').build(model_cfg)


def backbone(model):
    return model.backbone


def plain(obj):
    """``obj`` without the ``_scope_`` keys mmengine adds to dicts inherited from a
    package's config (``mmdet::...``)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert 'mask_rcnn_msvmamba_t_1x.py' in names
    assert any(p.parent.name == 'examples' for p in CONFIGS)


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_builds(path):
    cfg = load(path)
    # the backbone, and the run-time glue (checkpoint fix, hooks) that the packages' own
    # tools need (tests/tools/test_ecosystem_tools.py)
    assert cfg.custom_imports == dict(imports=['projects.msvmamba', 'projects.msvmamba_mm'],
                                      allow_failed_imports=False)
    # checkpoints written atomically, --resume safe to pass (projects/msvmamba_mm/checkpoints.py);
    # checkpoint and exit on a preemption signal, stop on nan/inf (configs/_base_/runtime/
    # long_run_hooks.py)
    assert cfg.default_hooks.checkpoint.type == 'PreemptionSafeCheckpointHook'
    assert cfg.default_hooks.preemption.type == 'PreemptionHook'
    assert cfg.default_hooks.divergence.type == 'DivergenceGuardHook'
    model = build_model(cfg)
    bb = backbone(model)
    assert type(bb).__name__ == 'MSVMamba'
    # the official weights are not needed to build, only to init_weights()
    init_cfg = cfg.model.backbone.get('init_cfg')
    if init_cfg is not None:
        assert init_cfg.type == 'Pretrained' and init_cfg.checkpoint.endswith('.pth')
    # every pipeline's transforms build too (no data is read)
    transforms = registry(cfg, 'TRANSFORMS')
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        for key in PIPELINES:
            for t in cfg.get(key, []):
                transforms.build(t)
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            for t in cfg[loader].dataset.get('pipeline', []):
                transforms.build(t)


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_backbone_widths_match_heads(path):
    """Stage widths of the arch the config names feed the neck/heads it sets."""
    from projects.msvmamba import MSVMamba
    cfg = load(path)
    bb = cfg.model.backbone
    dims = MSVMamba.resolve_arch(bb.arch)['dims']
    if cfg.default_scope == 'mmpretrain':
        assert tuple(bb.out_indices) == (3, ) and bb.final_norm
        assert cfg.model.head.in_channels == dims[3]
    elif cfg.default_scope == 'mmdet':
        # RetinaNet: stages 1-3 (P3-P7, as mmdet's Swin RetinaNet); the others all four
        levels = (1, 2, 3) if cfg.model.type == 'RetinaNet' else (0, 1, 2, 3)
        assert tuple(bb.out_indices) == levels and not bb.final_norm
        assert list(cfg.model.neck.in_channels) == [dims[i] for i in levels]
    else:
        assert tuple(bb.out_indices) == (0, 1, 2, 3) and not bb.final_norm
        assert list(cfg.model.decode_head.in_channels) == dims
        assert cfg.model.auxiliary_head.in_channels == dims[2]


# The paper's values that are easy to lose in inheritance (docs/architecture.md §6.2, §6.3, §7).
RECIPE = {
    'msvmamba_n_in1k.py': dict(arch='nano', dp=0.2, lr=1e-3),
    'msvmamba_m_in1k.py': dict(arch='micro', dp=0.2, lr=1e-3),
    'msvmamba_t_in1k.py': dict(arch='tiny', dp=0.2, lr=1e-3),
    'msvmambav3_t_in1k.py': dict(arch='v3_tiny', dp=0.2, lr=1e-3),
    'msvmambav3_s_in1k.py': dict(arch='v3_small', dp=0.4, lr=1e-3),
    'msvmambav3_b_in1k.py': dict(arch='v3_base', dp=0.5, lr=6e-4),
    'mask_rcnn_msvmamba_n_1x.py': dict(arch='nano', dp=0.2, epochs=12),
    'mask_rcnn_msvmamba_m_1x.py': dict(arch='micro', dp=0.2, epochs=12),
    'mask_rcnn_msvmamba_t_1x.py': dict(arch='tiny', dp=0.2, epochs=12),
    'mask_rcnn_msvmamba_m_3x.py': dict(arch='micro', dp=0.2, epochs=36),
    'mask_rcnn_msvmamba_t_3x.py': dict(arch='tiny', dp=0.2, epochs=36),
    'upernet_msvmamba_n_160k_ade20k.py': dict(arch='nano', dp=0.3),
    'upernet_msvmamba_m_160k_ade20k.py': dict(arch='micro', dp=0.3),
    'upernet_msvmamba_t_160k_ade20k.py': dict(arch='tiny', dp=0.2),
    # beyond the paper (drop path: VMamba's det/seg configs of the same size; Swin's
    # Cascade keeps the Mask R-CNN value), see each config's header
    'mask_rcnn_msvmambav3_t_1x.py': dict(arch='v3_tiny', dp=0.2, epochs=12),
    'mask_rcnn_msvmambav3_s_1x.py': dict(arch='v3_small', dp=0.2, epochs=12),
    'mask_rcnn_msvmambav3_b_1x.py': dict(arch='v3_base', dp=0.6, epochs=12),
    'mask_rcnn_msvmambav3_t_3x.py': dict(arch='v3_tiny', dp=0.2, epochs=36),
    'mask_rcnn_msvmambav3_s_3x.py': dict(arch='v3_small', dp=0.2, epochs=36),
    'mask_rcnn_msvmambav3_b_3x.py': dict(arch='v3_base', dp=0.6, epochs=36),
    'cascade_mask_rcnn_msvmamba_t_3x.py': dict(arch='tiny', dp=0.2, epochs=36,
                                               detector='CascadeRCNN'),
    'cascade_mask_rcnn_msvmambav3_t_3x.py': dict(arch='v3_tiny', dp=0.2, epochs=36,
                                                 detector='CascadeRCNN'),
    'cascade_mask_rcnn_msvmambav3_s_3x.py': dict(arch='v3_small', dp=0.2, epochs=36,
                                                 detector='CascadeRCNN'),
    'cascade_mask_rcnn_msvmambav3_b_3x.py': dict(arch='v3_base', dp=0.6, epochs=36,
                                                 detector='CascadeRCNN'),
    'retinanet_msvmamba_n_1x.py': dict(arch='nano', dp=0.2, epochs=12, detector='RetinaNet'),
    'retinanet_msvmamba_m_1x.py': dict(arch='micro', dp=0.2, epochs=12,
                                       detector='RetinaNet'),
    'upernet_msvmambav3_t_160k_ade20k.py': dict(arch='v3_tiny', dp=0.2),
    'upernet_msvmambav3_s_160k_ade20k.py': dict(arch='v3_small', dp=0.3),
    'upernet_msvmambav3_b_160k_ade20k.py': dict(arch='v3_base', dp=0.6),
}
# ImageNet-1k weights: upstream's files; v3 (Hugging Face) with their EMA weights
CKPT = {'nano': 'checkpoints/msvmamba_nano_in1k.pth',
        'micro': 'checkpoints/msvmamba_micro_in1k.pth',
        'tiny': 'checkpoints/msvmamba_tiny_in1k.pth',
        'v3_tiny': 'checkpoints/msvmambav3_tiny_224.pth',
        'v3_small': 'checkpoints/msvmambav3_small_224.pth',
        'v3_base': 'checkpoints/msvmambav3_base_224.pth'}


def test_recipe_table_covers_configs():
    top = {p.name for p in CONFIGS if p.parent == CONFIG_DIR}
    assert top == set(RECIPE), 'add the paper recipe of a new experiment config to RECIPE'


@pytest.mark.parametrize('name', sorted(RECIPE))
def test_recipe_values(name):
    cfg, want = load(name), RECIPE[name]
    cfg = Config(plain(cfg.to_dict()))
    bb = cfg.model.backbone
    assert bb.arch == want['arch'] and bb.drop_path_rate == want['dp']
    if cfg.default_scope == 'mmpretrain':
        ow = cfg.optim_wrapper
        assert ow.type == 'AmpOptimWrapper' and ow.clip_grad == dict(max_norm=5.0)
        assert ow.optimizer == dict(type='AdamW', lr=want['lr'], weight_decay=0.05,
                                    eps=1e-8, betas=(0.9, 0.999))
        assert ow.paramwise_cfg == dict(flat_decay_mult=0.0)
        assert cfg.train_dataloader.batch_size == 128  # x 8 GPUs
        assert cfg.auto_scale_lr.base_batch_size == 1024
        assert cfg.train_cfg.max_epochs == 300
        warmup, cosine = cfg.param_scheduler
        assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-3, 20)
        assert (cosine.type, cosine.eta_min_ratio, cosine.begin, cosine.end) == \
            ('CosineAnnealingLR', 1e-2, 20, 300)
        assert warmup.convert_to_iter_based and cosine.convert_to_iter_based
        assert [(h.type, h.momentum) for h in cfg.custom_hooks] == [('EMAHook', 1e-4)]
        assert [a.type for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
        assert bb.get('init_cfg') is None  # trained from scratch
        return
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=CKPT[want['arch']],
                               use_ema=want['arch'].startswith('v3'))
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and 'clip_grad' not in ow
    assert ow.paramwise_cfg == dict(custom_keys={'norm': dict(decay_mult=0.0)})
    if cfg.default_scope == 'mmdet':
        assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                    weight_decay=0.05)
        assert cfg.train_dataloader.batch_size == 4  # x 4 GPUs = 16
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
        assert cfg.train_cfg.max_epochs == want['epochs']
        assert cfg.model.type == want.get('detector', 'MaskRCNN')
        warmup, steps = cfg.param_scheduler
        assert (warmup.start_factor, warmup.end, warmup.by_epoch) == (1e-3, 1000, False)
        assert steps.milestones == ([8, 11] if want['epochs'] == 12 else [27, 33])
        assert steps.end == want['epochs'] and steps.gamma == 0.1
        pipeline = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert ('RandomChoice' in pipeline) == (want['epochs'] == 36)
    else:
        assert ow.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),
                                    weight_decay=0.01)
        assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
        warmup, poly = cfg.param_scheduler
        assert (warmup.start_factor, warmup.end) == (1e-6, 1500)
        assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == \
            ('PolyLR', 1.0, 0.0, 1500, 160000)
        assert cfg.model.data_preprocessor.size == (512, 512)
        assert cfg.tta_model.type == 'SegTTAModel'
        resize, flip = cfg.tta_pipeline[1].transforms[:2]
        assert [r.scale_factor for r in resize] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert [f.prob for f in flip] == [0.0, 1.0]


def test_no_swin_leftovers():
    """Backbones are replaced, not merged into the Swin/ResNet dicts (docs/architecture.md §9.21)."""
    allowed = {'type', 'arch', 'out_indices', 'final_norm', 'drop_path_rate', 'init_cfg',
               'frozen_stages', 'with_cp', 'in_channels'}
    for path in CONFIGS:
        cfg = load(path)
        assert set(cfg.model.backbone) <= allowed, (path, set(cfg.model.backbone))
        assert cfg.model.get('pretrained') is None, path
        custom_keys = cfg.optim_wrapper.get('paramwise_cfg', {}).get('custom_keys', {})
        assert 'relative_position_bias_table' not in custom_keys, path


def test_optimizer_builds_and_decays_as_upstream():
    """Classification: no weight decay exactly for the 1-D parameters (upstream's
    ndim == 1 / '.bias' rule); det/seg: exactly for names containing 'norm'
    (docs/architecture.md §9.16), so A_logs and dt_projs_bias are decayed in both."""
    from mmengine.optim import build_optim_wrapper
    rules = {'msvmamba_n_in1k.py': lambda n, p: p.ndim == 1,
             'mask_rcnn_msvmamba_n_1x.py': lambda n, p: 'norm' in n,
             'upernet_msvmamba_n_160k_ade20k.py': lambda n, p: 'norm' in n}
    for name, no_decay in rules.items():
        cfg = load(name)
        model = build_model(cfg)
        cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        group_of = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
        base = cfg.optim_wrapper.optimizer.weight_decay
        checked = 0
        for n, p in model.backbone.named_parameters():
            want = 0.0 if no_decay(n, p) else base
            assert group_of[id(p)]['weight_decay'] == want, (name, n)
            checked += n.endswith(('A_logs', 'dt_projs_bias', 'Ds'))
        assert checked > 0, name


@pytest.mark.parametrize('name', ['msvmamba_n_in1k.py'])
def test_smallest_model_forward(name):
    model = build_model(load(name)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_cascade_heads_and_size():
    """Cascade Mask R-CNN-T: the Swin 3x heads (3 stages of 4-conv + 1-fc box heads with
    SyncBN and GIoU on decoded boxes) and about 90M parameters: Cascade Mask R-CNN FPN
    plus the 32,278,656 of the dense Tiny backbone (docs/architecture.md §6.2)."""
    cfg = load('cascade_mask_rcnn_msvmamba_t_3x.py')
    heads = cfg.model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [
        [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    for h in heads:
        assert (h.type, h.num_shared_convs, h.num_shared_fcs) == ('ConvFCBBoxHead', 4, 1)
        assert h.norm_cfg.type == 'SyncBN' and h.reg_decoded_bbox
        assert (h.loss_bbox.type, h.loss_bbox.loss_weight) == ('GIoULoss', 10.0)
    model = build_model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 32_278_656
    assert 88e6 < count(model) < 92e6, count(model)
