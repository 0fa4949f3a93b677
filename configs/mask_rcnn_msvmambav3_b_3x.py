# Mask R-CNN + FPN, MSVMambav3-Base, COCO 3x multi-scale + crop. No published
# result. VMamba publishes no Base 3x config: drop path 0.6 from its Base 1x
# (as its Tiny/Small keep their 1x value for 3x); all else as
# ./mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4, AdamW 1e-4).
_base_ = ['./mask_rcnn_msvmambav3_t_3x.py', './_base_/variants/msvmambav3_base.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.6),
    neck=dict(in_channels=_base_.variant.widths))
