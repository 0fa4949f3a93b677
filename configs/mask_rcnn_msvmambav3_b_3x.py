# Mask R-CNN + FPN, MSVMambav3-Base, COCO 3x multi-scale + crop. No published
# result. VMamba publishes no Base 3x config: drop path 0.6 from its Base 1x
# (as its Tiny/Small keep their 1x value for 3x); all else as
# ./mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4, AdamW 1e-4).
_base_ = './mask_rcnn_msvmambav3_t_3x.py'

model = dict(
    backbone=dict(arch='v3_base', drop_path_rate=0.6,
                  init_cfg=dict(checkpoint='checkpoints/msvmambav3_base_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
