# Cascade Mask R-CNN + FPN, MSVMambav3-Base, COCO 3x multi-scale + crop. No
# published result. Drop path 0.6 as ./mask_rcnn_msvmambav3_b_3x.py (VMamba-B's
# detection value; Swin-B's Cascade uses 0.3 for its own backbone); all else as
# ./cascade_mask_rcnn_msvmambav3_t_3x.py (16 = 4 GPUs x 4; 2/GPU on 8 GPUs if
# memory is short).
_base_ = './cascade_mask_rcnn_msvmambav3_t_3x.py'

model = dict(
    backbone=dict(arch='v3_base', drop_path_rate=0.6,
                  init_cfg=dict(checkpoint='checkpoints/msvmambav3_base_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
