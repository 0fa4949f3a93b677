# Cascade Mask R-CNN + FPN, MSVMambav3-Small, COCO 3x multi-scale + crop. No
# published result. Drop path 0.2 as ./mask_rcnn_msvmambav3_s_3x.py (Swin-S uses
# 0.2 for Mask R-CNN and Cascade alike); all else as
# ./cascade_mask_rcnn_msvmambav3_t_3x.py.
_base_ = ['./cascade_mask_rcnn_msvmambav3_t_3x.py', './_base_/variants/msvmambav3_small.py']

model = dict(backbone=_base_.variant.backbone)  # same widths as v3 Tiny
