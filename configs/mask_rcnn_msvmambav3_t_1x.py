# Mask R-CNN + FPN, MSVMambav3-Tiny backbone, COCO 2017, 1x (12 epochs).
# No published result: upstream has no v3 detection (configs/README.md).
# Recipe = ./mask_rcnn_msvmamba_t_1x.py but the backbone: 16 images = 4 GPUs x 4,
# AdamW lr 1e-4 (for 16; --auto-scale-lr rescales), wd 0.05, no decay on 'norm'
# parameters, 1000-iter warm-up, x0.1 at epochs 8 and 11, no layer-wise lr decay.
# Choices and sources (VMamba's downstream configs are the closest published
# recipe for backbones of this size, 30M/50M/89M for VMamba-T/S/B):
# - drop path 0.2: VMamba detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny.py
#   (1x and ms_3x), the same as our MSVMamba-Tiny Mask R-CNN;
# - lr, wd, betas, 'norm' no-decay, schedule: VMamba's and upstream MSVMamba's
#   Mask R-CNN configs (both inherit Swin's mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py);
# - init: the official Hugging Face file msvmambav3_tiny_224.pth, its 'model_ema'
#   weights, which is what the v2 branch's backbone loader reads by default
#   (docs/architecture.md §8.2). A file without them stops with an error naming
#   use_ema=False.
_base_ = './mask_rcnn_msvmamba_t_1x.py'

model = dict(
    backbone=dict(
        arch='v3_tiny',
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_tiny_224.pth', use_ema=True)))
