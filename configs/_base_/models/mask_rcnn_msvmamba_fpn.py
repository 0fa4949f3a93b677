# Mask R-CNN + FPN with an MSVMamba backbone (Tiny widths by default).
# Everything but the backbone and the FPN input widths is mmdet's
# Mask R-CNN R-50-FPN model (RPN, RoI heads, train/test cfg, data preprocessor:
# ImageNet mean/std, bgr_to_rgb, pad_size_divisor 32).
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', './msvmamba_dense_backbone.py']

model = dict(
    backbone=_base_.dense_backbone,
    # stage widths C, 2C, 4C, 8C of the backbone
    neck=dict(in_channels=[96, 192, 384, 768], out_channels=256, num_outs=5),
)
