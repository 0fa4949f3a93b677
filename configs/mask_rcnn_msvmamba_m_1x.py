# Mask R-CNN + FPN, MSVMamba-Micro, COCO 1x; everything else (16 = 4 GPUs x 4
# images, AdamW 1e-4, drop path 0.2, ...) as ./mask_rcnn_msvmamba_t_1x.py.
# Paper: box AP 43.8, mask AP 39.9, 32M params, 201 GFLOPs.
_base_ = ['./mask_rcnn_msvmamba_t_1x.py', './_base_/variants/msvmamba_micro.py']

model = dict(backbone=_base_.variant.backbone, neck=dict(in_channels=_base_.variant.widths))
