# Mask R-CNN + FPN, MSVMambav3-Small, COCO 3x multi-scale + crop. No published
# result. Drop path 0.2 as VMamba's mask_rcnn_vssm_fpn_coco_small_ms_3x.py; all else
# as ./mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4, AdamW 1e-4).
_base_ = ['./mask_rcnn_msvmambav3_t_3x.py', './_base_/variants/msvmambav3_small.py']

model = dict(backbone=_base_.variant.backbone)  # same widths as v3 Tiny
