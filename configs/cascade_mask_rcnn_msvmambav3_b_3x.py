# Cascade Mask R-CNN + FPN, MSVMambav3-Base, COCO 3x multi-scale + crop. No
# published result. Drop path 0.6 as ./mask_rcnn_msvmambav3_b_3x.py (VMamba-B's
# detection value; Swin-B's Cascade uses 0.3 for its own backbone); all else as
# ./cascade_mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4; 2/GPU on 8 GPUs if
# memory is short).
_base_ = ['./cascade_mask_rcnn_msvmambav3_t_3x.py', './_base_/variants/msvmambav3_base.py']

model = dict(
    backbone=dict(_base_.variant.backbone, drop_path_rate=0.6),
    neck=dict(in_channels=_base_.variant.widths))
