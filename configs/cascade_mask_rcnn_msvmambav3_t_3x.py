# Cascade Mask R-CNN + FPN, MSVMambav3-Tiny, COCO 3x multi-scale + crop. No
# published result. Recipe, heads and batch (16 = 4 GPUs x 4) as
# ./cascade_mask_rcnn_msvmamba_t_3x.py; backbone, drop path 0.2 and 'model_ema'
# init from the Hugging Face file as ./mask_rcnn_msvmambav3_t_3x.py (Swin keeps
# the Mask R-CNN drop path for Cascade).
_base_ = './cascade_mask_rcnn_msvmamba_t_3x.py'

model = dict(
    backbone=dict(
        arch='v3_tiny',
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_tiny_224.pth', use_ema=True)))
