# Mask R-CNN + FPN, MSVMamba-Tiny, COCO 2017, 3x (36 epochs) with the
# multi-scale + crop training of the Swin 3x recipe. Total batch 16 = 4 GPUs x
# 4 images, lr 1e-4, drop path 0.2, ImageNet-1k Tiny init: as
# ./mask_rcnn_msvmamba_t_1x.py.
# Paper (upstream README): box AP 48.3, mask AP 43.2, 53M params, 252 GFLOPs.
_base_ = [
    './_base_/models/mask_rcnn_msvmamba_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/mask_rcnn_adamw_3x.py',
    './_base_/runtime/det_runtime.py',
]
