# UperNet (+ FCN auxiliary head on stage 3) with an MSVMamba backbone (Tiny
# widths by default), 150 ADE20K classes. Heads, SyncBN, losses (CE 1.0 / 0.4),
# data preprocessor and test mode 'whole' come from mmseg's UperNet-Swin model.
_base_ = 'mmseg::_base_/models/upernet_swin.py'

# projects.msvmamba: the backbone; projects.msvmamba_mm: the torch >= 2.6 checkpoint fix,
# hooks and model wrappers, so mmdet's/mmseg's/mmpretrain's own tools (and mim) work too
custom_imports = dict(imports=['projects.msvmamba', 'projects.msvmamba_mm'],
                      allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,  # drop every Swin key (docs/architecture.md §9.21)
        type='MSVMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32
        final_norm=False,  # dense mode: LayerNorm outnorm{i} on every output
        drop_path_rate=0.2,
        # Official ImageNet-1k MSVMamba-Tiny checkpoint, its 'model' (not EMA)
        # weights as upstream det/seg load them; see configs/README.md "Model
        # zoo". Another file: --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/msvmamba_tiny_in1k.pth',
            use_ema=False),
    ),
    decode_head=dict(
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        align_corners=False),
    auxiliary_head=dict(
        in_channels=384,  # 4C: stage-3 output
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        align_corners=False),
)
