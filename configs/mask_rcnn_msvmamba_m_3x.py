# Mask R-CNN + FPN, MSVMamba-Micro, COCO 3x multi-scale + crop; everything else
# as ./mask_rcnn_msvmamba_t_3x.py (16 = 4 GPUs x 4 images).
# Paper: box AP 46.3, mask AP 41.8, 32M params, 201 GFLOPs.
_base_ = ['./mask_rcnn_msvmamba_t_3x.py', './_base_/variants/msvmamba_micro.py']

model = dict(backbone=_base_.variant.backbone, neck=dict(in_channels=_base_.variant.widths))
