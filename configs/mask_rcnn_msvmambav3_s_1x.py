# Mask R-CNN + FPN, MSVMambav3-Small, COCO 1x. No published result.
# Drop path 0.2: VMamba's Mask R-CNN Small (detection/configs/vssm1/
# mask_rcnn_vssm_fpn_coco_small.py, 1x and ms_3x), although its ImageNet recipe
# uses more (VMamba-S 0.3; ours 0.4). Everything else as
# ./mask_rcnn_msvmambav3_t_1x.py (16 = 4 GPUs x 4, AdamW 1e-4, 'model_ema' init).
_base_ = ['./mask_rcnn_msvmambav3_t_1x.py', './_base_/variants/msvmambav3_small.py']

model = dict(backbone=_base_.variant.backbone)  # same widths as v3 Tiny
