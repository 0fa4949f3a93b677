# Mask R-CNN + FPN with an MSVMamba backbone (Tiny widths by default).
# Everything but the backbone and the FPN input widths is mmdet's
# Mask R-CNN R-50-FPN model (RPN, RoI heads, train/test cfg, data preprocessor:
# ImageNet mean/std, bgr_to_rgb, pad_size_divisor 32).
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

# projects.msvmamba: the backbone; projects.msvmamba_mm: the torch >= 2.6 checkpoint fix,
# hooks and model wrappers, so mmdet's/mmseg's/mmpretrain's own tools (and mim) work too
custom_imports = dict(imports=['projects.msvmamba', 'projects.msvmamba_mm'],
                      allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,  # drop every ResNet/Swin key (docs/architecture.md §9.21)
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
    # stage widths C, 2C, 4C, 8C of the backbone
    neck=dict(in_channels=[96, 192, 384, 768], out_channels=256, num_outs=5),
)
