# Mask R-CNN + FPN, MSVMamba-Nano, COCO 1x; everything else (16 = 4 GPUs x 4
# images, AdamW 1e-4, drop path 0.2, ...) as ./mask_rcnn_msvmamba_t_1x.py.
# Upstream ships this config but reports no result (26.6M params, 187.5 GFLOPs).
_base_ = ['./mask_rcnn_msvmamba_t_1x.py', './_base_/variants/msvmamba_nano.py']

model = dict(backbone=_base_.variant.backbone, neck=dict(in_channels=_base_.variant.widths))
