# Mask R-CNN + FPN, MSVMamba-Nano, COCO 1x; everything else (16 = 4 GPUs x 4
# images, AdamW 1e-4, drop path 0.2, ...) as ./mask_rcnn_msvmamba_t_1x.py.
# Upstream ships this config but reports no result (26.6M params, 187.5 GFLOPs).
_base_ = './mask_rcnn_msvmamba_t_1x.py'

model = dict(
    backbone=dict(
        arch='nano',
        init_cfg=dict(checkpoint='checkpoints/msvmamba_nano_in1k.pth')),
    neck=dict(in_channels=[48, 96, 192, 384]))
