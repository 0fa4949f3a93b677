# UperNet, MSVMambav3-Tiny backbone, ADE20K 512x512, 160k iterations. No published
# result: upstream has no v3 segmentation (configs/README.md).
# Recipe = ./upernet_msvmamba_t_160k_ade20k.py but the backbone: 2 images/GPU x 8
# GPUs = 16, AdamW lr 6e-5 (for 16; --auto-scale-lr rescales), wd 0.01, no decay on
# 'norm' parameters, 1500-iter warm-up then poly decay, no layer-wise lr decay.
# Choices and sources (VMamba's UperNet configs, the closest published recipe for
# backbones of this size):
# - drop path 0.2: VMamba segmentation/configs/vssm1/
#   upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py;
# - lr, wd, schedule, batch: VMamba's and upstream MSVMamba's UperNet (both inherit
#   Swin's swin-*-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py);
# - init: the official Hugging Face file msvmambav3_tiny_224.pth, 'model_ema'
#   weights (the v2 branch's loader default, docs/architecture.md §8.2).
_base_ = './upernet_msvmamba_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='v3_tiny',
        init_cfg=dict(checkpoint='checkpoints/msvmambav3_tiny_224.pth', use_ema=True)))
