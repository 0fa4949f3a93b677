# Mask R-CNN + FPN, MSVMambav3-Small, COCO 3x multi-scale + crop. No published
# result. Drop path 0.2 as VMamba's mask_rcnn_vssm_fpn_coco_small_ms_3x.py; all else
# as ./mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4, AdamW 1e-4).
_base_ = './mask_rcnn_msvmambav3_t_3x.py'

model = dict(
    backbone=dict(
        arch='v3_small',
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_small_224.pth')))
