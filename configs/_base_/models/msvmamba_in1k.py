# ImageNet-1k classifier: MSVMamba backbone (Tiny by default) + global average
# pooling + linear head. The variant configs override `arch`, `drop_path_rate`
# and `head.in_channels` (= the last stage width 8C).
# Inherited from mmpretrain's Swin-T model: ImageClassifier, GlobalAveragePooling,
# LinearClsHead with LabelSmoothLoss(0.1, mode='original') on Mixup(0.8) /
# CutMix(1.0) soft targets, and the model-level init (trunc_normal(0.02) for
# every nn.Linear, 1/0 for every LayerNorm), which is upstream VSSM._init_weights.
_base_ = 'mmpretrain::_base_/models/swin_transformer/tiny_224.py'

# projects.msvmamba: the backbone; projects.msvmamba_mm: the torch >= 2.6 checkpoint fix,
# hooks and model wrappers, so mmdet's/mmseg's/mmpretrain's own tools (and mim) work too
custom_imports = dict(imports=['projects.msvmamba', 'projects.msvmamba_mm'],
                      allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,  # drop every Swin key
        type='MSVMamba',
        arch='tiny',
        out_indices=(3, ),
        final_norm=True,  # classification mode: classifier.norm of upstream
        drop_path_rate=0.2,
    ),
    head=dict(num_classes=1000, in_channels=768),
)
