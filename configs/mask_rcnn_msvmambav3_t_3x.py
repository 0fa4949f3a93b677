# Mask R-CNN + FPN, MSVMambav3-Tiny, COCO 2017, 3x (36 epochs, multi-scale + crop
# training, x0.1 at epochs 27 and 33) as ./mask_rcnn_msvmamba_t_3x.py. No published
# result. Backbone, drop path 0.2 (VMamba mask_rcnn_vssm_fpn_coco_tiny_ms_3x.py) and
# 'model_ema' init from the Hugging Face file as ./mask_rcnn_msvmambav3_t_1x.py;
# 16 images = 4 GPUs x 4, AdamW lr 1e-4, wd 0.05.
_base_ = './mask_rcnn_msvmamba_t_3x.py'

model = dict(
    backbone=dict(
        arch='v3_tiny',
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_tiny_224.pth', use_ema=True)))
