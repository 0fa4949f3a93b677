# Cascade Mask R-CNN + FPN, MSVMamba-Tiny, COCO 2017, 3x (36 epochs) with the
# multi-scale + crop training. No published result: upstream has no Cascade config.
# Recipe: Swin's Cascade Mask R-CNN 3x (cascade_mask_rcnn_swin_tiny_patch4_window7_
# mstrain_480-800_giou_4conv1f_adamw_3x_coco.py), which is also our Mask R-CNN 3x
# recipe plus the Cascade heads (./_base_/models/cascade_mask_rcnn_msvmamba_fpn.py):
# - AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05, no decay on 'norm' parameters
#   (Swin; no layer-wise lr decay), LinearLR warm-up 1000 iters from 1e-3 x lr,
#   x0.1 at epochs 27 and 33: ./_base_/schedules/mask_rcnn_adamw_3x.py;
# - multi-scale 480-800 + random crop: ./_base_/datasets/coco_instance_ms_crop.py;
# - drop path 0.2: Swin keeps each backbone's Mask R-CNN value for Cascade (Swin-T
#   0.2 in both), so ours is that of ./mask_rcnn_msvmamba_t_3x.py;
# - total batch 16 (Swin: 8 GPUs x 2; here 4 GPUs x 4 as all our COCO configs;
#   --auto-scale-lr rescales lr 1e-4 for another total);
# - Swin trains in fp16; our Mask R-CNN recipe does not: add --amp on GPUs.
# ImageNet-1k MSVMamba-Tiny init ('model' weights). About 90M parameters: the
# Cascade Mask R-CNN FPN heads plus the 32.3M dense Tiny backbone.
_base_ = [
    './_base_/models/cascade_mask_rcnn_msvmamba_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/mask_rcnn_adamw_3x.py',
    './_base_/runtime/det_runtime.py',
]
