# Mask R-CNN + FPN, MSVMamba-Micro, COCO 1x; everything else (16 = 4 GPUs x 4
# images, AdamW 1e-4, drop path 0.2, ...) as ./mask_rcnn_msvmamba_t_1x.py.
# Paper: box AP 43.8, mask AP 39.9, 32M params, 201 GFLOPs.
_base_ = './mask_rcnn_msvmamba_t_1x.py'

model = dict(
    backbone=dict(
        arch='micro',
        init_cfg=dict(checkpoint='checkpoints/msvmamba_micro_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
