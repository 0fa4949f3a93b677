# The MSVMamba backbone of every detection and segmentation model base here (Tiny by
# default), read by them as _base_.dense_backbone. Dense mode: out_indices picks the
# stages (C, 2C, 4C, 8C at strides 4, 8, 16, 32), each with its LayerNorm outnorm{i};
# no final classifier norm.
# Init: the official ImageNet-1k MSVMamba-Tiny checkpoint, its 'model' (not EMA) weights
# as upstream det/seg load them; see configs/README.md "Model zoo". Another file:
# --cfg-options model.backbone.init_cfg.checkpoint=PATH

# projects.msvmamba: the backbone; projects.msvmamba_mm: the torch >= 2.6 checkpoint fix,
# hooks and model wrappers, so mmdet's/mmseg's/mmpretrain's own tools (and mim) work too
custom_imports = dict(imports=['projects.msvmamba', 'projects.msvmamba_mm'],
                      allow_failed_imports=False)

dense_backbone = dict(
    _delete_=True,  # no stock ResNet/Swin key survives (docs/architecture.md §9.21)
    type='MSVMamba',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    final_norm=False,
    drop_path_rate=0.2,
    init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/msvmamba_tiny_in1k.pth', use_ema=False),
)
